/*
 * auth/auth.h - the public face of auth/: API keys and scopes (keys.h), per-key limits
 * (limiter.h), the tamper-evident audit log (audit.h), PII masking (mask.h), the master key
 * (master.h) and encryption at rest (seal.h). Each section header documents its contract.
 *
 * auth/ knows nothing of HTTP or models (DESIGN.md section 1): it turns a bearer token into a
 * principal, meters it, writes audit records, masks text and seals files. server/guard.c wires
 * it into the HTTP server.
 */
#ifndef INFERA_AUTH_H
#define INFERA_AUTH_H

#include "audit.h"
#include "keys.h"
#include "limiter.h"
#include "mask.h"
#include "master.h"
#include "seal.h"

#endif /* INFERA_AUTH_H */
