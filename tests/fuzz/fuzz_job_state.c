/*
 * tests/fuzz/fuzz_job_state.c - the fine-tuning job state files that job_queue_open() rebuilds
 * the queue from: <data>/jobs/<id>/job.json and events.jsonl.
 *
 * Input: job.json, optionally one NUL byte and events.jsonl (no NUL: no events file). They are
 * written for the job FUZZ_JOB_ID under a scratch data directory (/dev/shm when there is one)
 * and the queue is opened with no workers and a zeroed struct server (no audit log, which is
 * all the open and cancel paths look at), then freed; per input the jobs directory starts
 * empty.
 *
 * Properties: the open succeeds. The job loads exactly when job.json is a job by the loader's
 * rules (an object whose "id" is the directory's, "status" one of the states or
 * "validating_files", "_owner" a string of at most KEY_ID_LEN bytes, "_seq" an integer >= 0,
 * "model" and "training_file" strings); otherwise its directory is quarantined
 * (<id>.corrupt-<time>) and the queue is empty. A loaded job: its object is public (no "_"
 * fields) with its id and a status (a job found "running" or "validating_files" is "queued"),
 * list/get/active/find_idempotent agree with its owner and status, the events are the leading
 * complete lines of events.jsonl that are objects (plus one "interrupted" event for a requeued
 * job), the checkpoint list has as many entries as "_checkpoints" when that is an array, and
 * every page answers with has_more false and no "_" fields. A queued job is cancelled. Then the
 * queue is reopened: the same job, object and events as the first queue left them (what it
 * wrote back is loadable and complete; a torn tail once cut stays cut).
 */

#include "server/http.h"
#include "server/jobs.h"
#include "tests/fuzz/fuzz.h"

#define FUZZ_JOB_ID "ftjob-FuzzJob00000000000000000"
_Static_assert(sizeof FUZZ_JOB_ID - 1 == JOB_ID_LEN, "FUZZ_JOB_ID is not job-id shaped");
#define FUZZ_OTHER_OWNER "not-an-owner-longer-than-KEY_ID_LEN"
#define FUZZ_PAGE        1000000

static char *jobs_dir_buf(void)
{
    static char path[512];
    return path;
}

static void jobs_dir_cleanup(void)
{
    if (jobs_dir_buf()[0] != '\0')
        fs_remove_tree(jobs_dir_buf());
}

/* The scratch data directory; its jobs/ is removed at exit before fuzz.h removes the rest. */
static const char *data_dir(void)
{
    static const char *dir;
    if (dir == NULL) {
        dir = fuzz_scratch_dir("jobstate");
        snprintf(jobs_dir_buf(), 512, "%s/jobs", dir);
        atexit(jobs_dir_cleanup); /* runs before fuzz_scratch_cleanup (registered first) */
    }
    return dir;
}

static const char *str_or_empty(const json_t *v)
{
    return json_is_string(v) ? json_string_value(v) : "";
}

/* The loader's rules for a job.json, from the document jansson parses. */
static bool ref_is_job(const json_t *doc)
{
    static const char *const states[] = {"queued", "running",   "succeeded",
                                         "failed", "cancelled", "validating_files"};
    if (!json_is_object(doc))
        return false;
    const char *st = json_string_value(json_object_get(doc, "status"));
    bool st_ok = false;
    for (size_t i = 0; st != NULL && i < sizeof states / sizeof states[0]; i++)
        st_ok = st_ok || strcmp(st, states[i]) == 0;
    const json_t *owner = json_object_get(doc, "_owner");
    return st_ok && json_is_string(owner) && json_string_length(owner) <= KEY_ID_LEN &&
           json_is_integer(json_object_get(doc, "_seq")) &&
           json_integer_value(json_object_get(doc, "_seq")) >= 0 &&
           strcmp(FUZZ_JOB_ID, str_or_empty(json_object_get(doc, "id"))) == 0 &&
           json_is_string(json_object_get(doc, "model")) &&
           json_is_string(json_object_get(doc, "training_file"));
}

/* How many events load_events keeps: leading '\n'-terminated lines that are JSON objects. */
static size_t ref_events(const char *ev, size_t len)
{
    size_t n = 0;
    for (size_t pos = 0; pos < len;) {
        const char *nl = memchr(ev + pos, '\n', len - pos);
        if (nl == NULL)
            break;
        json_t *o = json_loadb(ev + pos, (size_t)(nl - ev) - pos, 0, NULL);
        bool obj = json_is_object(o);
        json_decref(o);
        if (!obj)
            break;
        n++;
        pos = (size_t)(nl - ev) + 1;
    }
    return n;
}

static bool has_private(const json_t *o)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)o, k, v)
    {
        if (k[0] == '_')
            return true;
    }
    return false;
}

/* Checks a list envelope holding everything (has_more false, n items, nothing private);
 * returns its data array (borrowed from list). */
static json_t *check_page(const json_t *list, size_t n, const char *what)
{
    json_t *data = json_object_get(list, "data");
    FUZZ_CHECK(json_is_array(data) && json_array_size(data) == n, "%s: %zu items, want %zu", what,
               json_array_size(data), n);
    FUZZ_CHECK(json_is_false(json_object_get(list, "has_more")), "%s: has_more", what);
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK(json_is_object(json_array_get(data, i)) && !has_private(json_array_get(data, i)),
                   "%s: item %zu is not a public object", what, i);
    return data;
}

static struct job_queue *open_queue(void)
{
    static struct server srv;    /* zeroed: no audit log */
    static struct master_key mk; /* fixed bytes 0..31 */
    for (size_t i = 0; i < sizeof mk.bytes; i++)
        mk.bytes[i] = (uint8_t)i;
    struct job_queue_config cfg = {
        .data_dir = data_dir(), .mk = &mk, .srv = &srv, .workers = 0, .max_jobs_per_key = 4};
    struct err e = {0};
    struct job_queue *q = job_queue_open(&cfg, &e);
    FUZZ_CHECK(q != NULL, "job_queue_open: %s", e.msg);
    return q;
}

/* The job's object and events after the checks of a first open; NULL when not loaded. */
struct snapshot {
    json_t *job, *events;
};

static struct snapshot first_open(const json_t *ref, bool valid, size_t n_events, bool have_events)
{
    struct snapshot s = {0};
    struct job_queue *q = open_queue();
    json_t *job = NULL, *list = NULL;
    struct err e = {0};
    int rc = job_queue_get(q, FUZZ_JOB_ID, "", true, &job);
    FUZZ_CHECK((rc == INF_OK) == valid, "job_queue_get: %d, the reference says %s", rc,
               valid ? "a job" : "not a job");
    FUZZ_CHECK(job_queue_list(q, "", true, NULL, NULL, FUZZ_PAGE, &list, &e) == INF_OK, "list: %s",
               e.msg);
    check_page(list, valid ? 1 : 0, "jobs");
    json_decref(list);
    if (!valid) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", jobs_dir_buf(), FUZZ_JOB_ID);
        struct stat st;
        FUZZ_CHECK(stat(path, &st) != 0, "a job.json that is not a job was not moved aside");
        job_queue_free(q);
        return s;
    }
    FUZZ_CHECK(json_is_object(job) && !has_private(job), "the job object is not public");
    FUZZ_CHECK(strcmp(str_or_empty(json_object_get(job, "id")), FUZZ_JOB_ID) == 0, "job id");
    const char *st_in = json_string_value(json_object_get(ref, "status"));
    const char *st = json_string_value(json_object_get(job, "status"));
    bool requeued = strcmp(st_in, "running") == 0 || strcmp(st_in, "validating_files") == 0;
    FUZZ_CHECK(st != NULL && strcmp(st, requeued ? "queued" : st_in) == 0, "status %s from %s",
               st ? st : "(none)", st_in);
    bool active = strcmp(st, "queued") == 0;

    const char *owner = json_string_value(json_object_get(ref, "_owner"));
    unsigned cap = 0;
    FUZZ_CHECK(job_queue_active(q, owner, &cap) == (active ? 1u : 0u) && cap == 4,
               "job_queue_active");
    json_t *other = NULL;
    FUZZ_CHECK(job_queue_get(q, FUZZ_JOB_ID, FUZZ_OTHER_OWNER, false, &other) == INF_ENOTFOUND,
               "another owner sees the job");
    FUZZ_CHECK(job_queue_get(q, FUZZ_JOB_ID, owner, false, &other) == INF_OK &&
                   json_equal(other, job),
               "the owner does not see the job");
    json_decref(other);
    const char *idem = json_string_value(json_object_get(ref, "_idempotency_key"));
    if (idem != NULL) {
        json_t *found = job_queue_find_idempotent(q, owner, idem);
        FUZZ_CHECK(found != NULL && json_equal(found, job), "find_idempotent");
        json_decref(found);
    }

    json_t *evs = NULL;
    FUZZ_CHECK(job_queue_events(q, FUZZ_JOB_ID, owner, false, NULL, FUZZ_PAGE, &evs, &e) == INF_OK,
               "events: %s", e.msg);
    size_t want = (have_events ? n_events : 0) + (requeued ? 1 : 0);
    json_t *items = check_page(evs, want, "events");
    if (want > 0) { /* paging after the newest: all but it */
        const char *first = json_string_value(json_object_get(json_array_get(items, 0), "id"));
        json_t *rest = NULL;
        struct err pe = {0};
        int prc = job_queue_events(q, FUZZ_JOB_ID, owner, false, first ? first : "", FUZZ_PAGE,
                                   &rest, &pe);
        FUZZ_CHECK(prc == INF_OK, "events after the newest: %s", pe.msg);
        FUZZ_CHECK(json_array_size(json_object_get(rest, "data")) < want,
                   "events after the newest");
        json_decref(rest);
    }
    json_t *cks = NULL;
    FUZZ_CHECK(job_queue_checkpoints(q, FUZZ_JOB_ID, owner, false, NULL, FUZZ_PAGE, &cks, &e) ==
                   INF_OK,
               "checkpoints: %s", e.msg);
    json_t *ck_in = json_object_get(ref, "_checkpoints");
    check_page(cks, json_is_array(ck_in) ? json_array_size(ck_in) : 0, "checkpoints");
    json_decref(cks);

    if (active) { /* cancel it: the state written must be what the next open reads */
        json_t *after = NULL;
        struct err ce = {0};
        FUZZ_CHECK(job_queue_cancel(q, FUZZ_JOB_ID, owner, false, NULL, 0, &after, &ce) == INF_OK,
                   "cancel: %s", ce.msg);
        FUZZ_CHECK(strcmp(str_or_empty(json_object_get(after, "status")), "cancelled") == 0,
                   "cancelled job not cancelled");
        json_decref(job);
        job = after;
        json_decref(evs);
        FUZZ_CHECK(job_queue_events(q, FUZZ_JOB_ID, owner, false, NULL, FUZZ_PAGE, &evs, &e) ==
                       INF_OK,
                   "events: %s", e.msg);
        check_page(evs, want + 1, "events after cancel");
    } else {
        json_t *after = NULL;
        struct err ce = {0};
        FUZZ_CHECK(job_queue_cancel(q, FUZZ_JOB_ID, owner, false, NULL, 0, &after, &ce) ==
                       INF_EINVAL,
                   "cancelling a %s job: %s", st, ce.msg);
    }
    job_queue_free(q);
    s.job = job;
    s.events = evs;
    return s;
}

static void reopen(const struct snapshot *s)
{
    struct job_queue *q = open_queue();
    json_t *job = NULL, *evs = NULL;
    struct err e = {0};
    int rc = job_queue_get(q, FUZZ_JOB_ID, "", true, &job);
    FUZZ_CHECK((rc == INF_OK) == (s->job != NULL), "reopen: job_queue_get %d", rc);
    if (s->job != NULL) {
        FUZZ_CHECK(json_equal(job, s->job), "reopen: the job object changed");
        FUZZ_CHECK(job_queue_events(q, FUZZ_JOB_ID, "", true, NULL, FUZZ_PAGE, &evs, &e) == INF_OK,
                   "reopen: events: %s", e.msg);
        FUZZ_CHECK(json_equal(evs, s->events), "reopen: the events changed");
    }
    json_decref(job);
    json_decref(evs);
    job_queue_free(q);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_setup_once();
    const char *dd = data_dir();
    (void)dd;
    fs_remove_tree(jobs_dir_buf());
    char path[1024];
    FUZZ_CHECK(mkdir(jobs_dir_buf(), 0700) == 0, "mkdir %s: %s", jobs_dir_buf(), strerror(errno));
    snprintf(path, sizeof path, "%s/%s", jobs_dir_buf(), FUZZ_JOB_ID);
    FUZZ_CHECK(mkdir(path, 0700) == 0, "mkdir %s: %s", path, strerror(errno));

    const char *in = (const char *)data;
    const char *nul = memchr(in, '\0', size);
    size_t jlen = nul ? (size_t)(nul - in) : size;
    const char *ev = nul ? nul + 1 : NULL;
    size_t evlen = nul ? size - jlen - 1 : 0;
    snprintf(path, sizeof path, "%s/%s/job.json", jobs_dir_buf(), FUZZ_JOB_ID);
    fuzz_write_file(path, in, jlen);
    if (ev != NULL) {
        snprintf(path, sizeof path, "%s/%s/events.jsonl", jobs_dir_buf(), FUZZ_JOB_ID);
        fuzz_write_file(path, ev, evlen);
    }

    json_t *ref = json_loadb(in, jlen, 0, NULL);
    bool valid = ref_is_job(ref);
    size_t n_events = ev ? ref_events(ev, evlen) : 0;
    FUZZ_DEBUG("job.json %zu bytes: %s; %zu events", jlen, valid ? "a job" : "not a job", n_events);
    struct snapshot s = first_open(ref, valid, n_events, ev != NULL);
    reopen(&s);
    json_decref(s.job);
    json_decref(s.events);
    json_decref(ref);
    return 0;
}
