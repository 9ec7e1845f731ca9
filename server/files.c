/* server/files.c - placeholder until the file store lands (see files.h). */
#include <stdlib.h>

#include "files.h"

struct file_store {
    int unused;
};

struct file_store *file_store_open(const char *data_dir, const struct master_key *mk,
                                   struct err *e)
{
    (void)data_dir;
    (void)mk;
    struct file_store *fs = calloc(1, sizeof *fs);
    if (fs == NULL)
        err_set(e, INF_ENOMEM, "out of memory");
    return fs;
}

void file_store_free(struct file_store *fs)
{
    free(fs);
}
