#include "pagodad_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace pagoda::testing {

std::string TestConfigYaml() {
  return R"(
server: {grpc_host: 127.0.0.1, grpc_port: 0, http_host: 127.0.0.1, http_port: 0}
store:
  host_bytes: 64MiB
  ssd_bytes: 256MiB
  layouts:
    - {dtype: fp16, kv_heads: 1, head_dim: 8, page_tokens: 16}
    - {dtype: fp16, kv_heads: 8, head_dim: 128, page_tokens: 16}
    - {dtype: fp16, kv_heads: 8, head_dim: 128, page_tokens: 512}
logging: {level: info}
)";
}

PageLayout SmallLayout() { return PageLayout{DType::kFp16, 1, 8, 16}; }
PageLayout LargeLayout() { return PageLayout{DType::kFp16, 8, 128, 512}; }

namespace {

std::string ReadAllFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

absl::StatusOr<std::unique_ptr<PagodadProcess>> PagodadProcess::Start(const Options& o) {
  auto p = std::make_unique<PagodadProcess>();
  if (o.data_dir.empty()) {
    char tmpl[] = "/tmp/pgdt-XXXXXX";  // short: the unix socket path must fit 107 bytes
    if (mkdtemp(tmpl) == nullptr) return absl::InternalError("mkdtemp failed");
    p->data_dir_ = tmpl;
    p->owns_dir_ = true;
  } else {
    p->data_dir_ = o.data_dir;
    std::filesystem::create_directories(o.data_dir);
  }
  const std::string config = p->data_dir_ + "/test-config.yaml";
  const std::string ports = p->data_dir_ + "/ports.json";
  std::filesystem::remove(ports);
  {
    std::ofstream out(config);
    out << o.config_yaml;
  }
  std::vector<std::string> args = {PAGODAD_BIN,  "--config",    config, "--data-dir",
                                   p->data_dir_, "--port-file", ports};
  args.insert(args.end(), o.extra_args.begin(), o.extra_args.end());
  const std::string log = p->data_dir_ + "/pagodad.log";
  pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  p->pid_ = pid;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      p->pid_ = -1;
      return absl::InternalError(absl::StrCat("pagodad exited at start: ", ReadAllFile(log)));
    }
    std::string json = ReadAllFile(ports);
    if (!json.empty()) {
      const nlohmann::json j = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
      if (!j.is_object() || !j.value("grpc_port", nlohmann::json()).is_number_integer() ||
          !j.value("http_port", nlohmann::json()).is_number_integer() ||
          !j.value("local_socket", nlohmann::json()).is_string()) {
        return absl::InternalError("bad port file: " + json);
      }
      p->grpc_port_ = j["grpc_port"].get<int>();
      p->http_port_ = j["http_port"].get<int>();
      p->local_socket_ = j["local_socket"].get<std::string>();
      return p;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return absl::DeadlineExceededError("pagodad did not start in 30 s: " + ReadAllFile(log));
}

PagodadProcess::~PagodadProcess() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  if (owns_dir_) {
    std::error_code ec;
    if (getenv("PAGODA_KEEP_TEST_DIRS") == nullptr) std::filesystem::remove_all(data_dir_, ec);
  }
}

absl::StatusOr<int> PagodadProcess::Stop(int sig, double timeout_s) {
  if (pid_ <= 0) return absl::FailedPreconditionError("not running");
  kill(pid_, sig);
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(int64_t(timeout_s * 1000));
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      if (WIFEXITED(status)) return WEXITSTATUS(status);
      return -WTERMSIG(status);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return absl::DeadlineExceededError("pagodad did not exit: " + Log());
}

std::string PagodadProcess::Log() const { return ReadAllFile(data_dir_ + "/pagodad.log"); }

ClientOptions PagodadProcess::ClientOpts(const std::string& tenant, DataPathKind path) const {
  ClientOptions o;
  o.target = target();
  o.tenant = tenant;
  o.data_path = path;
  o.timeout = absl::Seconds(20);
  return o;
}

std::vector<uint8_t> PageBytes(const PageKey& key, size_t size, uint64_t seed) {
  std::vector<uint8_t> b(size);
  uint64_t x = key.hi * 0x9E3779B97F4A7C15ULL ^ key.lo ^ (seed + 0x12345);
  for (size_t i = 0; i < size; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    b[i] = static_cast<uint8_t>(x);
  }
  return b;
}

double MetricValue(const std::string& page, const std::string& name) {
  const std::string needle = "\n" + name + " ";
  const size_t at = page.find(needle);
  if (at == std::string::npos) return -1;
  return std::strtod(page.c_str() + at + needle.size(), nullptr);
}

absl::StatusOr<std::string> HttpGet(int port, const std::string& path) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    ::close(fd);
    return absl::UnavailableError("http connect failed");
  }
  std::string req = "GET " + path + " HTTP/1.0\r\n\r\n";
  (void)!::write(fd, req.data(), req.size());
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return out;
}

}  // namespace pagoda::testing
