#include "pagoda/transport/remote_key.h"

#include <gtest/gtest.h>

namespace pagoda {
namespace {

RemoteKey SampleKey() {
  RemoteKey k;
  k.kind = MemoryKind::kHost;
  k.base = 0x7f0012345000ULL;
  k.length = 1 << 20;
  k.transport_key = std::string("\x01\x02\x00\xff rkey bytes", 16);
  return k;
}

TEST(RemoteKeyTest, RoundTrips) {
  RemoteKey k = SampleKey();
  auto decoded = DecodeRemoteKey(EncodeRemoteKey(k));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->kind, k.kind);
  EXPECT_EQ(decoded->base, k.base);
  EXPECT_EQ(decoded->length, k.length);
  EXPECT_EQ(decoded->transport_key, k.transport_key);
}

TEST(RemoteKeyTest, EveryFlippedByteIsRejected) {
  std::string bytes = EncodeRemoteKey(SampleKey());
  for (size_t i = 0; i < bytes.size(); ++i) {
    std::string bad = bytes;
    bad[i] ^= 0x20;
    auto decoded = DecodeRemoteKey(bad);
    EXPECT_EQ(decoded.status().code(), absl::StatusCode::kInvalidArgument) << "byte " << i;
  }
}

TEST(RemoteKeyTest, TruncatedAndExtendedKeysAreRejected) {
  std::string bytes = EncodeRemoteKey(SampleKey());
  for (size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_FALSE(DecodeRemoteKey(bytes.substr(0, n)).ok()) << n;
  }
  EXPECT_FALSE(DecodeRemoteKey(bytes + "x").ok());
}

TEST(RemoteKeyTest, InconsistentFieldsAreRejectedEvenWithAValidFrame) {
  RemoteKey empty = SampleKey();
  empty.length = 0;
  EXPECT_EQ(DecodeRemoteKey(EncodeRemoteKey(empty)).status().code(),
            absl::StatusCode::kInvalidArgument);
  RemoteKey wraps = SampleKey();
  wraps.base = ~0ULL - 10;
  EXPECT_EQ(DecodeRemoteKey(EncodeRemoteKey(wraps)).status().code(),
            absl::StatusCode::kInvalidArgument);
  RemoteKey no_tk = SampleKey();
  no_tk.transport_key.clear();
  EXPECT_EQ(DecodeRemoteKey(EncodeRemoteKey(no_tk)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(RemoteKeyTest, PeerAddressFrameIsNotAKey) {
  std::string addr = EncodePeerAddress("worker-address-bytes");
  auto decoded = DecodePeerAddress(addr);
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(*decoded, "worker-address-bytes");
  EXPECT_FALSE(DecodeRemoteKey(addr).ok());
  EXPECT_FALSE(DecodePeerAddress(EncodeRemoteKey(SampleKey())).ok());
  EXPECT_FALSE(DecodePeerAddress("").ok());
  EXPECT_FALSE(DecodePeerAddress(EncodePeerAddress("")).ok());
}

}  // namespace
}  // namespace pagoda
