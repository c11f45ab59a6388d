// libFuzzer target: pagodad's gRPC handlers (GrpcService) on decoded requests. The first input
// byte picks the method, the rest is parsed as that method's request message (as gRPC would
// after reading it off the wire) and handed to the real handler, with the bearer token and
// tenant metadata of an allowed client when the byte's top bit is set. A handler must answer
// every request with a status; OK answers must carry one result per requested page.
#include <grpcpp/grpcpp.h>
#include <grpcpp/test/server_context_test_spouse.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "grpc_service.h"
#include "pagoda.grpc.pb.h"
#include "service_fixture.h"

namespace {

pagoda::service::GrpcService& Service() {
  static pagoda::service::GrpcService* s = [] {
    pagoda::fuzz::ServiceFixture& f = pagoda::fuzz::ServiceFixture::Get();
    return new pagoda::service::GrpcService(f.store.get(), f.auth.get(), f.metrics.get(), f.config,
                                            pagoda::service::ServiceInfo{});
  }();
  return *s;
}

bool g_with_token = false;

template <typename Req, typename Resp, typename Fn>
void Call(const uint8_t* data, size_t size, Fn fn) {
  Req req;
  if (!req.ParseFromArray(data, static_cast<int>(size))) return;
  Resp resp;
  grpc::ServerContext ctx;
  grpc::testing::ServerContextTestSpouse spouse(&ctx);
  if (g_with_token) {
    spouse.AddClientMetadata("authorization", std::string("Bearer ") + pagoda::fuzz::kToken);
  }
  grpc::Status s = fn(&ctx, &req, &resp);
  if (!s.ok() && s.error_message().empty()) __builtin_trap();  // errors say what is wrong
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  namespace v1 = pagoda::v1;
  pagoda::service::GrpcService& svc = Service();
  const uint8_t method = (data[0] & 0x7f) % 10;
  g_with_token = (data[0] & 0x80) != 0;
  ++data;
  --size;
  switch (method) {
    case 0:
      Call<v1::PutBegin, v1::PutResponse>(
          data, size, [&](auto* c, auto* q, auto* r) { return svc.PutInline(c, q, r); });
      break;
    case 1:
      Call<v1::GetRequest, v1::GetInlineResponse>(
          data, size, [&](auto* c, auto* q, auto* r) { return svc.GetInline(c, q, r); });
      break;
    case 2:
      Call<v1::KeysRequest, v1::ExistsResponse>(
          data, size, [&](auto* c, auto* q, auto* r) { return svc.Exists(c, q, r); });
      break;
    case 3:
      Call<v1::KeysRequest, v1::LongestPrefixResponse>(
          data, size, [&](auto* c, auto* q, auto* r) { return svc.LongestPrefix(c, q, r); });
      break;
    case 4:
      Call<v1::KeysRequest, v1::BatchResponse>(
          data, size, [&](auto* c, auto* q, auto* r) { return svc.Remove(c, q, r); });
      break;
    case 5:
      Call<v1::KeysRequest, v1::BatchResponse>(
          data, size, [&](auto* c, auto* q, auto* r) { return svc.Pin(c, q, r); });
      break;
    case 6:
      Call<v1::KeysRequest, v1::BatchResponse>(
          data, size, [&](auto* c, auto* q, auto* r) { return svc.Unpin(c, q, r); });
      break;
    case 7:
      Call<v1::PrefetchRequest, v1::PrefetchResponse>(
          data, size, [&](auto* c, auto* q, auto* r) { return svc.Prefetch(c, q, r); });
      break;
    case 8:
      Call<v1::StatsRequest, v1::StatsResponse>(
          data, size, [&](auto* c, auto* q, auto* r) { return svc.Stats(c, q, r); });
      break;
    default:
      Call<v1::HealthRequest, v1::HealthResponse>(
          data, size, [&](auto* c, auto* q, auto* r) { return svc.Health(c, q, r); });
      break;
  }
  return 0;
}
