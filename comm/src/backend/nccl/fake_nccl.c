/* A stand-in for libnccl.so.2 with the twenty functions ferrovod resolves, for the tests of
 * the loader and of the non-blocking communicator (comm.rs) on machines without NCCL or a GPU.
 * It moves no data. Its behaviour follows from the number of ranks asked for:
 *   1 rank:  joins after three polls in progress;
 *   2 or 4 ranks: never finishes joining (a peer that never comes);
 *   3 ranks: fails while joining (ncclSystemError, with a last-error text).
 * fake_aborts(n) counts ncclCommAbort calls on communicators of n ranks. */
#include <stdlib.h>
#include <string.h>

typedef struct { int n, rank, polls, fail; } comm_t;
typedef struct { size_t size; unsigned magic, version; int blocking; } config_t;
typedef struct { char internal[128]; } id_t_;
static int aborts[8];

int fake_aborts(int n) { return n >= 0 && n < 8 ? aborts[n] : -1; }
int ncclGetVersion(int *v) { *v = 22703; return 0; }
const char *ncclGetErrorString(int code) { return code == 2 ? "unhandled system error" : "fake error"; }
const char *ncclGetLastError(void *comm) { (void)comm; return "fake: peer went away"; }
int ncclGetUniqueId(id_t_ *id) { memset(id->internal, 7, 128); return 0; }
int ncclCommInitRankConfig(comm_t **comm, int n, id_t_ id, int rank, config_t *config) {
  (void)id;
  if (!config || config->magic != 0xcafebeef || config->blocking != 0 || config->version < 21400 ||
      config->size < sizeof(config_t)) return 4; /* ncclInvalidArgument */
  comm_t *c = calloc(1, sizeof(comm_t));
  c->n = n; c->rank = rank; c->polls = n == 2 || n == 4 ? -1 : 3; c->fail = n == 3 ? 2 : 0;
  *comm = c;
  return 7; /* ncclInProgress */
}
int ncclCommGetAsyncError(comm_t *c, int *state) {
  if (c->polls < 0) { *state = 7; return 0; }
  if (c->polls > 0) { c->polls--; *state = 7; return 0; }
  *state = c->fail;
  return 0;
}
int ncclCommAbort(comm_t *c) { if (c->n >= 0 && c->n < 8) aborts[c->n]++; free(c); return 0; }
int ncclCommFinalize(comm_t *c) { (void)c; return 0; }
int ncclCommDestroy(comm_t *c) { free(c); return 0; }
int ncclCommCount(comm_t *c, int *v) { *v = c->n; return 0; }
int ncclCommCuDevice(comm_t *c, int *v) { (void)c; *v = 0; return 0; }
int ncclCommUserRank(comm_t *c, int *v) { *v = c->rank; return 0; }
int ncclAllReduce(void) { return 0; }
int ncclBroadcast(void) { return 0; }
int ncclAllGather(void) { return 0; }
int ncclReduceScatter(void) { return 0; }
int ncclSend(void) { return 0; }
int ncclRecv(void) { return 0; }
int ncclGroupStart(void) { return 0; }
int ncclGroupEnd(void) { return 0; }
