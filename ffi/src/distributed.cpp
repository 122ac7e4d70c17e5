// MLX's distributed engine (mlx::core::distributed): one group per process, initialised once
// from MLX_HOSTFILE/MLX_RANK (the ring backend) or explicit arguments; collective and
// point-to-point ops that are lazy arrays like any other. And a watchdog: the ring backend
// has no timeout of its own, so a peer that stops answering would leave a rank waiting forever.
#include <dirent.h>
#include <netdb.h>
#include <netinet/in.h>
#if defined(__linux__)
#include <linux/tcp.h>  // glibc's struct tcp_info lacks the byte counts
#elif defined(__APPLE__)
#include <netinet/tcp.h>
#endif
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <cstddef>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <thread>

#include "common.h"

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0  // where a closed connection raises no SIGPIPE on send anyway, or never gets here (sockets())
#endif

namespace md = mx::distributed;
using namespace shim;

namespace {

std::optional<md::Group> group;
// The connections to the other ranks (the ring backend's; none for another backend).
std::vector<int> group_sockets;

// This process's open sockets (Linux; none elsewhere).
std::vector<int> sockets() {
  std::vector<int> fds;
  if (DIR* dir = opendir("/proc/self/fd")) {
    while (dirent* entry = readdir(dir)) {
      int fd = std::atoi(entry->d_name);
      struct stat st;
      if (fd > 2 && fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode)) fds.push_back(fd);
    }
    closedir(dir);
  }
  return fds;
}

// The port of a socket's own end or of its peer's.
int port_of(int fd, bool peer) {
  sockaddr_storage address;
  socklen_t length = sizeof(address);
  int r = peer ? getpeername(fd, reinterpret_cast<sockaddr*>(&address), &length)
               : getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  if (r != 0) return -1;
  if (address.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&address)->sin_port);
  if (address.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&address)->sin6_port);
  return -1;
}

// Each rank's addresses in MLX's ring hostfile: a JSON list with, per rank, a list of
// "host:port" strings. The ring backend makes one connection per address to each neighbour.
std::vector<std::vector<std::string>> ring_hostfile() {
  std::vector<std::vector<std::string>> ranks;
  const char* path = std::getenv("MLX_HOSTFILE");
  if (path == nullptr) return ranks;
  std::ifstream file(path);
  std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  int depth = 0;
  for (size_t i = 0; i < text.size(); i++) {
    if (text[i] == '[' && ++depth == 2) ranks.emplace_back();
    if (text[i] == ']') depth--;
    if (text[i] != '"') continue;
    size_t end = text.find('"', i + 1);
    if (end == std::string::npos) break;
    if (depth == 2) ranks.back().push_back(text.substr(i + 1, end - i - 1));
    i = end;
  }
  return ranks;
}

// The port of a "host:port" address (-1 if it has none).
int port_in(const std::string& address) {
  size_t colon = address.rfind(':');
  return colon == std::string::npos ? -1 : std::atoi(address.c_str() + colon + 1);
}

bool has_port(const std::vector<std::string>& addresses, int port) {
  return port > 0 && std::any_of(addresses.begin(), addresses.end(), [&](auto& a) { return port_in(a) == port; });
}

// The ring's connections among the sockets opened since `before`: those with a port of the ring
// hostfile at either end. Not every new socket: a server (rank 0's HTTP) may accept connections
// while the ring connects, and those come and go.
std::vector<int> ring_connections(const std::vector<int>& before, const std::vector<std::vector<std::string>>& ranks) {
  std::vector<std::string> all;
  for (const auto& r : ranks) all.insert(all.end(), r.begin(), r.end());
  std::vector<int> found;
  for (int fd : sockets())
    if (std::find(before.begin(), before.end(), fd) == before.end() &&
        (has_port(all, port_of(fd, false)) || has_port(all, port_of(fd, true))))
      found.push_back(fd);
  return found;
}

// Whether `fd`'s own end is `address` ("host:port", looked up as MLX's ring backend looks it up:
// its first answer). A rank's addresses may share a port (one per network link), so which
// address a connection was accepted on takes its host too.
bool bound_to(int fd, const std::string& address) {
  size_t colon = address.rfind(':');
  if (colon == std::string::npos) return false;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(address.substr(0, colon).c_str(), address.c_str() + colon + 1, &hints, &found) != 0) return false;
  sockaddr_storage own;
  socklen_t length = sizeof(own);
  bool same = getsockname(fd, reinterpret_cast<sockaddr*>(&own), &length) == 0 &&
              own.ss_family == found->ai_family;
  if (same && own.ss_family == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(&own);
    auto* b = reinterpret_cast<sockaddr_in*>(found->ai_addr);
    same = a->sin_port == b->sin_port && a->sin_addr.s_addr == b->sin_addr.s_addr;
  } else if (same && own.ss_family == AF_INET6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&own);
    auto* b = reinterpret_cast<sockaddr_in6*>(found->ai_addr);
    same = a->sin6_port == b->sin6_port && std::memcmp(&a->sin6_addr, &b->sin6_addr, sizeof(a->sin6_addr)) == 0;
  }
  freeaddrinfo(found);
  return same;
}

// MLX's ring backend sends up to this many bytes over a neighbour's first connection alone, however
// many there are (each connection's share of a transfer is at least this).
constexpr uint64_t kUnsplitBytes = 1024;

// The ring's connections to each neighbour: one per address of a rank in the hostfile (MLX
// requires as many for every rank; known from the hostfile, so also where the connections
// themselves cannot be found: not Linux), 1 for another backend. MLX spreads each send and
// receive over them by size (see mlxs_distributed_send_message).
size_t connections = 1;

// The ring's first connection from the previous rank (its left: the one this rank accepted on its
// first address in the hostfile), which alone carries a send of up to kUnsplitBytes (a header);
// -1 where none was found (another backend, not Linux).
int previous_socket = -1;

void find_previous(int rank, int size, const std::vector<std::vector<std::string>>& ranks) {
  if (static_cast<int>(ranks.size()) != size || ranks[rank].empty()) return;
  connections = ranks[rank].size();
  std::vector<int> accepted;
  for (int fd : group_sockets)
    if (has_port(ranks[rank], port_of(fd, false))) accepted.push_back(fd);
  if (connections == 1) {
    if (accepted.size() == 1) previous_socket = accepted[0];
    return;
  }
  for (int fd : accepted)
    if (bound_to(fd, ranks[rank][0])) previous_socket = fd;
}

md::Group& the_group() {
  if (!group) throw std::runtime_error("the distributed group is not initialised");
  return *group;
}

// The connections to the next rank on which a pipeline's signs of life come (see Neighbours):
// never waited on for the ring's transfers, nor counted as its bytes.
std::vector<int> signs_of_life;

bool carries_signs_of_life(int fd) {
  return std::find(signs_of_life.begin(), signs_of_life.end(), fd) != signs_of_life.end();
}

// Bytes that have arrived so far on the ring's connections (the kernel's count, read by us or
// not), or nullopt where the system does not count them. While a peer's bytes keep coming it is
// alive, however long the collective they belong to takes.
std::optional<uint64_t> bytes_received() {
  if (group_sockets.empty()) return std::nullopt;
  uint64_t total = 0;
  for (int fd : group_sockets) {
    if (carries_signs_of_life(fd)) continue;
#if defined(__linux__)
    tcp_info info{};
    socklen_t length = sizeof(info);
    // Kernels before 4.1 fill less of the struct.
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &length) != 0 ||
        length < offsetof(tcp_info, tcpi_bytes_received) + sizeof(info.tcpi_bytes_received))
      return std::nullopt;
    total += info.tcpi_bytes_received;
#elif defined(__APPLE__)
    tcp_connection_info info{};
    socklen_t length = sizeof(info);
    if (getsockopt(fd, IPPROTO_TCP, TCP_CONNECTION_INFO, &info, &length) != 0) return std::nullopt;
    total += info.tcpi_rxbytes;
#else
    return std::nullopt;
#endif
  }
  return total;
}

using Clock = std::chrono::steady_clock;

// A pipeline's signs of life (mlxs_watchdog_neighbours). A rank waiting for a later one hears
// only from the last rank, and a stopped process's kernel still takes what is sent to it, so a
// stopped middle rank would go unnoticed while the ranks after it clear a backlog. So each rank
// writes a byte to its previous rank every quarter of the timeout and reads its next rank's, on
// the directions of the ring's connections that a pipeline's transfers never use: MLX sends to
// the next rank on the connections it made to the right and receives from the previous one on
// those it accepted from the left (with 2 ranks too: it looks for a send's rank on the right
// first, for a receive's on the left). The bytes are written and read on the watchdog's thread,
// so a rank busy in a long computation, or blocked in a send, still shows it is alive, while a
// stopped one does not.
struct Neighbours {
  // The connections from the previous rank (several where the hostfile gives it several addresses).
  std::vector<int> to_previous;
  // The connections to the next rank, each with when a byte last came on it; at first a timeout
  // after the watch began, since the next rank starts telling only once its own connections are
  // made (which waits for the rank after it), so its first word is allowed twice the timeout.
  std::vector<std::pair<int, Clock::time_point>> from_next;
  std::chrono::milliseconds timeout;
  std::string message;
  Clock::time_point told{};

  // Tells the previous rank, reads what the next one said, and ends the process if a connection
  // to it has been silent for the timeout; returns when to look again.
  Clock::time_point look(Clock::time_point now) {
    auto every = std::max(timeout / 4, std::chrono::milliseconds(1));
    if (now >= told + every) {
      char alive = 1;
      // Never blocks, and a closed connection is no signal: whoever reads it finds that out.
      for (int fd : to_previous) ::send(fd, &alive, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
      told = now;
    }
    for (auto at = from_next.begin(); at != from_next.end();) {
      auto [fd, heard] = *at;
      bool closed = false;
      for (char bytes[256];;) {
        ssize_t r = ::recv(fd, bytes, sizeof(bytes), MSG_DONTWAIT);
        if (r > 0) heard = now;
        if (r > 0 || (r < 0 && errno == EINTR)) continue;
        closed = r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
        break;
      }
      // A closed connection is no silence: the rank exited or died, and the ring's transfers
      // (and the launcher) report that.
      if (closed) {
        at = from_next.erase(at);
        continue;
      }
      if (now >= heard + timeout) {
        std::fprintf(stderr, "%s\n", message.c_str());
        std::fflush(stderr);
        std::_Exit(3);
      }
      at++->second = heard;
    }
    return std::min(told + every, now + std::max(timeout / 8, std::chrono::milliseconds(1)));
  }

  // How long the quietest connection to the next rank has been silent (as of the last look);
  // negative until its first word is due.
  Clock::duration silence(Clock::time_point now) const {
    auto longest = Clock::duration::min();
    for (const auto& [fd, heard] : from_next) longest = std::max(longest, now - heard);
    return longest;
  }
};

// The watchdog: a thread that ends the process with a message when the peers have been silent
// for the armed timeout. Silent, not slow: a long collective (a tensor-parallel prefill chunk on
// a busy machine, each layer's all_sum a few seconds apart) is not a lost peer, so while armed
// the thread looks at the ring's received-bytes count every eighth of the timeout, and any bytes
// that came push the deadline to a timeout from then. Where the count is not available, the
// deadline is the armed one. A rank arms and disarms it several times a token, so neither wakes
// the thread: it sleeps until the time it last chose, and then looks again (a later deadline, or
// none, sends it back to sleep). Only a deadline earlier than that (or any, when it waits with
// none) needs to wake it. In a pipeline the thread also keeps the neighbours' signs of life
// (Neighbours), a deadline per connection to the next rank, whether armed or not.
struct Watchdog {
  std::mutex mutex;
  std::condition_variable changed;
  std::optional<Clock::time_point> deadline;
  std::chrono::milliseconds timeout{0};
  // The ring's received bytes when last looked at (by arm or by the thread).
  std::optional<uint64_t> heard;
  std::string message;
  bool started = false;
  // When the thread wakes next (none: it waits for an arm); an earlier deadline must wake it.
  std::optional<Clock::time_point> wakes_at;
  std::optional<Neighbours> neighbours;

  void run() {
    std::unique_lock lock(mutex);
    for (;;) {
      auto now = Clock::now();
      std::optional<Clock::time_point> next;
      if (neighbours) next = neighbours->look(now);
      if (deadline) {
        auto count = bytes_received();
        if (count && heard && *count != *heard) deadline = now + timeout;  // a peer spoke since we looked
        heard = count;
        // The ring's silence often starts with the next rank's: when that rank has been silent
        // for half the timeout (a live one speaks every quarter), its own deadline, at most half
        // a timeout away, ends the process naming it rather than the ring as a whole.
        bool next_rank_silent = neighbours && neighbours->silence(now) >= neighbours->timeout / 2;
        if (now >= *deadline && !next_rank_silent) {
          std::fprintf(stderr, "%s\n", message.c_str());
          std::fflush(stderr);
          std::_Exit(3);
        }
        auto eighth = now + std::max(timeout / 8, std::chrono::milliseconds(1));
        auto look = now >= *deadline ? eighth : count ? std::min(*deadline, eighth) : *deadline;
        next = next ? std::min(*next, look) : look;
      }
      wakes_at = next;
      if (wakes_at) changed.wait_until(lock, *wakes_at);
      else changed.wait(lock);
    }
  }

  void start() {
    if (started) return;
    std::thread([this] { run(); }).detach();
    started = true;
  }
};

Watchdog& watchdog() {
  static Watchdog* w = new Watchdog();  // never destroyed: its thread may outlive static destructors
  return *w;
}

// Joins the group and finds the ring's connections. Runs on a thread of its own, so that the
// caller's goes on while the ring waits for its peers (a server answers /health meanwhile); the
// caller makes no use of the group until it has seen `done`.
void join(const std::string& backend) {
  auto before = sockets();
  {
    FastRingConnects connects;
    group = md::init(true, backend);
  }
  auto ranks = ring_hostfile();
  auto made = ring_connections(before, ranks);
  {
    // The watchdog, armed while this rank joins, reads them on its thread.
    std::lock_guard lock(watchdog().mutex);
    group_sockets = std::move(made);
  }
  find_previous(group->rank(), group->size(), ranks);
}

// The join in progress: started once per process; done when it ended, with `error` if it failed.
struct Joining {
  std::mutex mutex;
  bool started = false;
  bool done = false;
  std::string error;
};

Joining& joining() {
  static Joining* j = new Joining();  // never destroyed: the joining thread may outlive static destructors
  return *j;
}

// A closed connection of the ring's, said as the error that ends an evaluation; none while
// every connection is open, or while a closed one still holds bytes to read: a peer that
// finished its part (the answer's last step) exits with its last bytes sent, and the
// evaluation may still complete from them.
std::optional<std::string> closed_connection() {
  std::vector<pollfd> fds;
  for (int fd : group_sockets) fds.push_back({fd, POLLRDHUP, 0});
  if (fds.empty() || poll(fds.data(), fds.size(), 0) <= 0) return std::nullopt;
  for (const auto& p : fds) {
    if (!(p.revents & (POLLRDHUP | POLLHUP | POLLERR))) continue;
    int unread = 0;
    if (!(p.revents & POLLERR) && ioctl(p.fd, FIONREAD, &unread) == 0 && unread > 0) continue;
    return "a peer closed its connection to the ring";
  }
  return std::nullopt;
}

// How long an evaluation may go on after a connection of the ring closed with nothing left
// to read: the work after its last transfer (the answer's last step), which needs no peer.
constexpr auto kAfterClosedGrace = std::chrono::milliseconds(1000);

// Whether ops are built on a stream any thread may encode (mlxs_distributed_share_stream).
bool shared_stream = false;

// Whether mlxs_eval_unless_peer_lost gave up on an evaluation (shim::stream_blocked).
std::atomic<bool> abandoned{false};

// The thread that evaluates for mlxs_eval_unless_peer_lost, so that the caller's thread can give
// up on an evaluation a lost peer left unfinished. Its thread stays blocked in that one: MLX waits
// for the stream (in eval, and in the cleanup of an evaluation whose encoding met the stream's
// error), and the stream waits for the queued transfer. One evaluation at a time, the caller
// waiting: MLX is used by one thread at a time, as everywhere else.
struct Evaluator {
  std::mutex mutex;
  std::condition_variable posted, finished;
  std::vector<mx::array> arrays;
  std::optional<std::string> error;
  uint64_t asked = 0, answered = 0;
  bool started = false;

  void run() {
    std::unique_lock lock(mutex);
    for (;;) {
      posted.wait(lock, [this] { return asked != answered; });
      auto outputs = std::move(arrays);
      lock.unlock();
      std::optional<std::string> failed;
      try {
        mx::eval(outputs);
      } catch (const std::exception& e) {
        failed = e.what();
      }
      outputs.clear();
      lock.lock();
      error = std::move(failed);
      answered = asked;
      finished.notify_all();
    }
  }
};

Evaluator& evaluator() {
  static Evaluator* e = new Evaluator();  // never destroyed: its thread may be blocked for good
  return *e;
}

}  // namespace

bool shim::stream_blocked() { return abandoned; }

extern "C" {

int mlxs_distributed_init_start(const char* backend, const char* hostfile, int explicit_rank) {
  return guard([&] {
    auto& j = joining();
    std::lock_guard lock(j.mutex);
    if (j.started) throw std::runtime_error("this process has joined a distributed group already");
    // Explicit arguments win over the environment MLX reads them from (set here, on the caller's
    // thread: setenv is not safe while another thread may read the environment).
    if (hostfile != nullptr && hostfile[0] != '\0') setenv("MLX_HOSTFILE", hostfile, 1);
    if (explicit_rank >= 0) setenv("MLX_RANK", std::to_string(explicit_rank).c_str(), 1);
    j.started = true;
    std::thread([backend = std::string(backend)] {
      std::string error;
      try {
        join(backend);
      } catch (const std::exception& e) {
        error = e.what();
      } catch (...) {
        error = "unknown C++ exception in MLX";
      }
      auto& j = joining();
      std::lock_guard lock(j.mutex);
      j.error = std::move(error);
      j.done = true;
    }).detach();
    return 0;
  });
}

int mlxs_distributed_init_poll(int* joined, int* rank, int* size) {
  return guard([&] {
    auto& j = joining();
    std::lock_guard lock(j.mutex);
    *joined = j.done ? 1 : 0;
    if (!j.done) return 0;
    if (!j.error.empty()) throw std::runtime_error(j.error);
    *rank = group->rank();
    *size = group->size();
    return 0;
  });
}

int mlxs_distributed_all_sum(mlxs_array** out, const mlxs_array* x) {
  return guard([&] { return put(out, md::all_sum(ref(x), the_group())); });
}

int mlxs_distributed_send(mlxs_array** out, const mlxs_array* x, int dst) {
  return guard([&] { return put(out, md::send(ref(x), dst, the_group())); });
}

int mlxs_distributed_send_message(mlxs_array** out, const mlxs_array* x, uint64_t header_bytes, int dst) {
  return guard([&] {
    auto& g = the_group();
    const auto& message = ref(x);
    if (connections == 1 || header_bytes >= message.nbytes())
      return put(out, md::send(message, dst, g));  // one stream of bytes: one send (one wake-up of the socket thread)
    // MLX cuts a send of n bytes into a share per connection (at least 1 KiB each) and a receive
    // the same way by its own size: the receiver takes the header, then the payload by its
    // shape, so each goes in a send of its own. Both are views of the message; the result is the
    // message, once both are sent.
    auto bytes = mx::flatten(mx::view(message, mx::uint8));
    int header = static_cast<int>(header_bytes);
    auto sent = md::send(mx::slice(bytes, {0}, {header}), dst, g);
    auto payload = mx::depends({mx::slice(bytes, {header}, {static_cast<int>(bytes.size())})}, {sent})[0];
    return put(out, mx::depends({message}, {md::send(payload, dst, g)})[0]);
  });
}

int mlxs_distributed_recv(mlxs_array** out, const int32_t* shape, int ndim, int dtype, int src) {
  return guard([&] { return put(out, md::recv(shape_of(shape, ndim), dtype_of(dtype), src, the_group())); });
}

int mlxs_watchdog_arm(int timeout_ms, const char* message) {
  return guard([&] {
    auto& w = watchdog();
    std::lock_guard lock(w.mutex);
    w.start();
    w.timeout = std::chrono::milliseconds(timeout_ms);
    w.deadline = std::chrono::steady_clock::now() + w.timeout;
    w.heard = bytes_received();  // silence counts from now: bytes that came before are no answer
    w.message = message;
    if (!w.wakes_at || *w.deadline < *w.wakes_at) w.changed.notify_all();
    return 0;
  });
}

int mlxs_distributed_share_stream(void) {
  return guard([&] {
    if (group_sockets.empty() || shared_stream) return 0;
    mx::set_default_stream(mx::new_thread_unsafe_stream(mx::default_device()));
    shared_stream = true;
    return 0;
  });
}

int mlxs_eval_unless_peer_lost(mlxs_array* const* arrays, int n) {
  return guard([&] {
    auto outputs = arrays_of(arrays, n);
    if (!shared_stream) {
      mx::eval(outputs);  // not the ring, or not Linux, or built where only this thread may encode them
      return 0;
    }
    auto& e = evaluator();
    std::unique_lock lock(e.mutex);
    // Still blocked in an evaluation given up on: this one would wait behind it.
    if (e.asked != e.answered) throw std::runtime_error("a peer closed its connection to the ring");
    if (!e.started) {
      std::thread([&e] { e.run(); }).detach();
      e.started = true;
    }
    e.arrays = std::move(outputs);
    e.asked++;
    e.posted.notify_one();
    // A lost peer shows within a second (kAfterClosedGrace); the watchdog times a silent one.
    std::optional<std::chrono::steady_clock::time_point> closed_at;
    while (!e.finished.wait_for(lock, std::chrono::milliseconds(10), [&e] { return e.asked == e.answered; }))
      if (auto closed = closed_connection()) {
        if (!closed_at) closed_at = std::chrono::steady_clock::now();
        if (std::chrono::steady_clock::now() - *closed_at < kAfterClosedGrace) continue;
        // The evaluator is blocked for good: at an exit that runs them, MLX's static destructors
        // would wait for the stream it blocks. The process ends before them, as the watchdog ends it.
        if (!abandoned.exchange(true)) std::atexit([] { std::_Exit(3); });
        throw std::runtime_error(*closed);
      }
    if (e.error) throw std::runtime_error(*e.error);
    return 0;
  });
}

int mlxs_wait_readable(int timeout_ms) {
  // The sockets the group opened (a rank serving HTTP has others), else every socket of this
  // process (a backend that opened none while we watched).
  std::vector<pollfd> fds;
  for (int fd : group_sockets.empty() ? sockets() : group_sockets)
    if (!carries_signs_of_life(fd)) fds.push_back({fd, POLLIN, 0});
  if (fds.empty()) return 1;  // nothing to wait on here (not Linux): let the receive wait
  int n = poll(fds.data(), fds.size(), timeout_ms);
  return n > 0 ? 1 : 0;
}

int mlxs_distributed_read(void* data, uint64_t nbytes, int src, int* read) {
  return guard([&] {
    auto& g = the_group();
    int fd = src == (g.rank() + g.size() - 1) % g.size() ? previous_socket : -1;
    if (connections > 1 && nbytes > kUnsplitBytes) fd = -1;  // part of it is on the other connections
    *read = 0;
    if (fd < 0) return 0;
    // MLX's socket threads made the connection non-blocking: wait for each part in poll().
    char* at = static_cast<char*>(data);
    for (uint64_t left = nbytes; left > 0;) {
      ssize_t r = ::recv(fd, at, left, 0);
      if (r > 0) {
        at += r;
        left -= r;
      } else if (r == 0) {
        throw std::runtime_error("rank " + std::to_string(src) + " closed its connection");
      } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
        pollfd p{fd, POLLIN, 0};
        poll(&p, 1, -1);  // the watchdog times a silence
      } else if (errno != EINTR) {
        throw std::runtime_error(std::string("reading from rank ") + std::to_string(src) + ": " + std::strerror(errno));
      }
    }
    *read = 1;
    return 0;
  });
}

void mlxs_watchdog_disarm(void) {
  auto& w = watchdog();
  std::lock_guard lock(w.mutex);
  w.deadline.reset();  // the thread finds out when it next wakes
}

int mlxs_watchdog_neighbours(int timeout_ms, const char* message) {
  return guard([&] {
    auto& w = watchdog();
    std::lock_guard lock(w.mutex);
    auto& g = the_group();
    auto ranks = ring_hostfile();
    if (group_sockets.empty() || static_cast<int>(ranks.size()) != g.size()) return 0;  // not the ring, or not Linux
    Neighbours n{.timeout = std::chrono::milliseconds(timeout_ms), .message = message};
    const auto& next = ranks[(g.rank() + 1) % g.size()];
    for (int fd : group_sockets) {
      // Accepted on this rank's own port: from the previous rank; made to the next one's port: to it.
      if (has_port(ranks[g.rank()], port_of(fd, false))) n.to_previous.push_back(fd);
      else if (has_port(next, port_of(fd, true))) n.from_next.push_back({fd, Clock::now() + n.timeout});
    }
    for (auto& [fd, heard] : n.from_next) signs_of_life.push_back(fd);
    w.neighbours = std::move(n);
    w.start();
    w.changed.notify_all();
    return 0;
  });
}

void mlxs_watchdog_silence(int32_t* out) {
  auto& w = watchdog();
  std::lock_guard lock(w.mutex);
  auto now = Clock::now();
  auto ms = [](Clock::duration d) {
    return static_cast<int32_t>(std::chrono::duration_cast<std::chrono::milliseconds>(d).count());
  };
  out[0] = out[1] = -1;
  if (w.neighbours && !w.neighbours->from_next.empty()) out[0] = std::max(-1, ms(w.neighbours->silence(now)));
  if (w.deadline) out[1] = std::max(0, ms(now - (*w.deadline - w.timeout)));
}

}  // extern "C"
