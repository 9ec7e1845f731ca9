/* server/multipart.c - placeholder until the multipart/form-data parser lands. */
typedef int multipart_placeholder;
