/* server/files_api.c - placeholder: answers 501 until the real handlers land. */
#include "http.h"

enum MHD_Result handle_files_create(struct request *rq)
{
    return http_respond_error(rq, MHD_HTTP_NOT_IMPLEMENTED, "not implemented yet");
}

enum MHD_Result handle_files_list(struct request *rq)
{
    return http_respond_error(rq, MHD_HTTP_NOT_IMPLEMENTED, "not implemented yet");
}

enum MHD_Result handle_files_get(struct request *rq)
{
    return http_respond_error(rq, MHD_HTTP_NOT_IMPLEMENTED, "not implemented yet");
}

enum MHD_Result handle_files_content(struct request *rq)
{
    return http_respond_error(rq, MHD_HTTP_NOT_IMPLEMENTED, "not implemented yet");
}

enum MHD_Result handle_files_delete(struct request *rq)
{
    return http_respond_error(rq, MHD_HTTP_NOT_IMPLEMENTED, "not implemented yet");
}

