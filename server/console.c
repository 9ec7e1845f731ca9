/* server/console.c - placeholder: the web console lands here (answers 501 until then). */
#include "http.h"

enum MHD_Result handle_console(struct request *rq)
{
    return http_respond_error(rq, MHD_HTTP_NOT_IMPLEMENTED, "not implemented yet");
}
