// adautomix_fast::set_fatal_message / arm_fatal_message: one line on stderr when the process dies
// in native code.
//
// A failed check inside code that torch.compile generated (a TORCH_CHECK in an OpenMP region of
// an Inductor C++ kernel, an out-of-bounds write that corrupts the heap) ends the process with
// SIGABRT or SIGSEGV: no Python exception is raised, so the engine cannot catch it and the user
// sees only "Aborted". While armed (the engine arms it around each compiled step), these handlers
// write the message the engine set (which step, which torch, the fallback flag) and the signal's
// name, then hand the signal to the handler that was there before (Python's faulthandler, or the
// default action), so the process still dies as it would have, exit status included.
//
// Only async-signal-safe calls run in the handler: write(2) of a preformatted buffer, sigaction
// and raise.
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <string>

#include <torch/library.h>

namespace adautomix_fast {
namespace {

constexpr int kSignals[] = {SIGABRT, SIGSEGV, SIGBUS, SIGFPE, SIGILL};
constexpr size_t kMessageSize = 2048;

char g_message[kMessageSize];
std::atomic<size_t> g_length{0};
std::atomic<bool> g_armed{false};
std::atomic<bool> g_installed{false};
struct sigaction g_previous[NSIG];

const char* signal_name(int sig) {
  switch (sig) {
    case SIGABRT: return "SIGABRT";
    case SIGSEGV: return "SIGSEGV";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGILL: return "SIGILL";
    default: return "a fatal signal";
  }
}

void write_all(const char* text, size_t length) {
  while (length > 0) {
    ssize_t written = ::write(STDERR_FILENO, text, length);
    if (written <= 0) return;
    text += written;
    length -= static_cast<size_t>(written);
  }
}

void on_fatal_signal(int sig, siginfo_t*, void*) {
  // Only the first thread to get here writes (an abort in one OpenMP thread may be followed by
  // faults in the others).
  if (g_armed.exchange(false)) {
    const char* name = signal_name(sig);
    write_all("\n", 1);
    write_all(g_message, g_length.load());
    write_all(" (", 2);
    write_all(name, strlen(name));
    write_all(")\n", 2);
  }
  sigaction(sig, &g_previous[sig], nullptr);
  raise(sig);
}

void install_handlers() {
  if (g_installed.exchange(true)) return;
  struct sigaction action;
  memset(&action, 0, sizeof(action));
  action.sa_sigaction = on_fatal_signal;
  action.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&action.sa_mask);
  for (int sig : kSignals) sigaction(sig, &action, &g_previous[sig]);
}

void set_fatal_message(const std::string& message) {
  g_armed.store(false);
  size_t length = std::min(message.size(), kMessageSize - 1);
  memcpy(g_message, message.data(), length);
  g_message[length] = '\0';
  g_length.store(length);
  install_handlers();
}

void arm_fatal_message(bool on) { g_armed.store(on && g_length.load() > 0); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(adautomix_fast, m) {
  m.def("set_fatal_message(str message) -> ()", &set_fatal_message);
  m.def("arm_fatal_message(bool on) -> ()", &arm_fatal_message);
}

}  // namespace adautomix_fast
