/* server/jobs_api.c - placeholder: answers 501 until the real handlers land. */
#include "http.h"

enum MHD_Result handle_jobs_create(struct request *rq)
{
    return http_respond_error(rq, MHD_HTTP_NOT_IMPLEMENTED, "not implemented yet");
}

enum MHD_Result handle_jobs_list(struct request *rq)
{
    return http_respond_error(rq, MHD_HTTP_NOT_IMPLEMENTED, "not implemented yet");
}

enum MHD_Result handle_jobs_get(struct request *rq)
{
    return http_respond_error(rq, MHD_HTTP_NOT_IMPLEMENTED, "not implemented yet");
}

enum MHD_Result handle_jobs_cancel(struct request *rq)
{
    return http_respond_error(rq, MHD_HTTP_NOT_IMPLEMENTED, "not implemented yet");
}

enum MHD_Result handle_jobs_events(struct request *rq)
{
    return http_respond_error(rq, MHD_HTTP_NOT_IMPLEMENTED, "not implemented yet");
}

enum MHD_Result handle_jobs_checkpoints(struct request *rq)
{
    return http_respond_error(rq, MHD_HTTP_NOT_IMPLEMENTED, "not implemented yet");
}

