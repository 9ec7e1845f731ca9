/*
 * server/console.c - GET /console and GET /console/{a}: the web console's static files.
 *
 * The page, its script and its style sheet are compiled into the binary (console_assets.h is
 * made at build time by server/console/embed.py from server/console/). The routes are open,
 * like a login page: the files hold no data, and everything the console shows comes from the
 * API with the key the user pastes, which the page keeps in sessionStorage only.
 *
 * Every answer carries a Content-Security-Policy that allows scripts, styles and connections
 * to this origin only (no inline script, no other hosts, no framing, no form submission), plus
 * Cache-Control: no-store and X-Content-Type-Options: nosniff. http_respond_extra() takes one
 * extra header, so the response is built here; the bookkeeping it does (audit record, status,
 * bytes, answered) is repeated.
 */
#include <string.h>

#include "http.h"

#include "console_assets.h"

struct console_asset {
    const char *name; /* the {a} segment; "" for /console itself */
    const char *content_type;
    const unsigned char *data; /* static: served without a copy */
    const size_t *len;
};

static const struct console_asset assets[] = {
    {"", "text/html; charset=utf-8", console_index_html, &console_index_html_len},
    {"index.html", "text/html; charset=utf-8", console_index_html, &console_index_html_len},
    {"console.js", "text/javascript; charset=utf-8", console_console_js, &console_console_js_len},
    {"console.css", "text/css; charset=utf-8", console_console_css, &console_console_css_len},
};

/* Same origin only. 'self' in connect-src is what lets the page call the API; form-action
 * 'none' keeps a form (the key field among them) from ever being submitted as a navigation,
 * even if the script failed to load. */
static const char csp[] = "default-src 'none'; script-src 'self'; style-src 'self'; "
                          "img-src 'self'; connect-src 'self'; base-uri 'none'; "
                          "form-action 'none'; frame-ancestors 'none'";

static const char *const headers[][2] = {
    {"Content-Security-Policy", csp},      {"Cache-Control", "no-store"},
    {"X-Content-Type-Options", "nosniff"}, {"X-Frame-Options", "DENY"},
    {"Referrer-Policy", "no-referrer"},
};

/* Queues a with its headers; answers 503 if the response cannot be built whole (a console
 * answer without its security headers is never sent). */
static enum MHD_Result console_send(struct request *rq, const struct console_asset *a)
{
    size_t len = *a->len;
    /* An open route writes no audit record unless the route table makes it protected; kept
     * so that this answer follows the same rule as every other. */
    if (guard_audit_request(rq, MHD_HTTP_OK, len) != INF_OK)
        return http_respond_error(rq, MHD_HTTP_SERVICE_UNAVAILABLE,
                                  "the audit log cannot be written; retry later");
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)a->data, MHD_RESPMEM_PERSISTENT);
    if (r == NULL)
        return http_respond_error(rq, MHD_HTTP_SERVICE_UNAVAILABLE, "out of memory");
    bool ok =
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, a->content_type) == MHD_YES &&
        MHD_add_response_header(r, "X-Request-Id", rq->id) == MHD_YES;
    for (size_t i = 0; ok && i < sizeof headers / sizeof headers[0]; i++)
        ok = MHD_add_response_header(r, headers[i][0], headers[i][1]) == MHD_YES;
    if (!ok) {
        MHD_destroy_response(r);
        return http_respond_error(rq, MHD_HTTP_SERVICE_UNAVAILABLE, "out of memory");
    }
    enum MHD_Result res = MHD_queue_response(rq->conn, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    rq->status = MHD_HTTP_OK;
    rq->bytes_out = len;
    rq->answered = true;
    return res;
}

enum MHD_Result handle_console(struct request *rq)
{
    /* /console has no captured segment, so params[0] is "" and picks the page. */
    const char *name = rq->params[0];
    for (size_t i = 0; i < sizeof assets / sizeof assets[0]; i++)
        if (strcmp(assets[i].name, name) == 0)
            return console_send(rq, &assets[i]);
    return http_respond_error(rq, MHD_HTTP_NOT_FOUND, "no console file named \"%.64s\"", name);
}
