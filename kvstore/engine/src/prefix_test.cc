#include "pagoda/kvstore/prefix.h"

#include <numeric>
#include <set>

#include "gtest/gtest.h"

namespace pagoda {
namespace {

TEST(ChainPageKeyTest, SameInputsSameKey) {
  std::vector<int32_t> t(16);
  std::iota(t.begin(), t.end(), 100);
  PageKeyExtra x{"llama", 3, "salt"};
  EXPECT_EQ(ChainPageKey(PageKey{}, t, x), ChainPageKey(PageKey{}, t, x));
}

TEST(ChainPageKeyTest, IsStableAcrossMachines) {
  // The encoding is explicit little-endian and the seed explicit: this value must hold on every
  // machine and in every version (changing it invalidates every cache).
  std::vector<int32_t> t = {1, 2, 3, 4};
  const PageKey k = ChainPageKey(PageKey{}, t, PageKeyExtra{"m", 0, ""});
  EXPECT_EQ(k.Hex(), "d51fa47616e97bbae99c9cda43ea93ab");
}

TEST(ChainPageKeyTest, EveryInputChangesTheKey) {
  std::vector<int32_t> t(16, 5);
  const PageKeyExtra x{"llama", 3, "salt"};
  const PageKey base = ChainPageKey(PageKey{}, t, x);
  std::set<std::string> keys = {base.Hex()};
  keys.insert(ChainPageKey(PageKey{1, 0}, t, x).Hex());
  keys.insert(ChainPageKey(PageKey{}, t, PageKeyExtra{"llamb", 3, "salt"}).Hex());
  keys.insert(ChainPageKey(PageKey{}, t, PageKeyExtra{"llama", 4, "salt"}).Hex());
  keys.insert(ChainPageKey(PageKey{}, t, PageKeyExtra{"llama", 3, "salu"}).Hex());
  keys.insert(ChainPageKey(PageKey{}, t, x, kDefaultPageKeySeed + 1).Hex());
  std::vector<int32_t> t2 = t;
  t2[15] = 6;
  keys.insert(ChainPageKey(PageKey{}, t2, x).Hex());
  // Field boundaries are length-prefixed: moving a byte from model id to salt changes the key.
  keys.insert(ChainPageKey(PageKey{}, t, PageKeyExtra{"llam", 3, "asalt"}).Hex());
  EXPECT_EQ(keys.size(), 8u);
}

TEST(ChainPageKeysTest, ChainsFullPagesAndSharesPrefixes) {
  std::vector<int32_t> a(40), b(40);
  std::iota(a.begin(), a.end(), 0);
  std::iota(b.begin(), b.end(), 0);
  b[20] = -1;  // differs in the second page
  const PageKeyExtra x{"m", 0, "s"};
  auto ka = ChainPageKeys(a, 16, x);
  auto kb = ChainPageKeys(b, 16, x);
  ASSERT_EQ(ka.size(), 2u);  // the trailing 8 tokens make no page
  ASSERT_EQ(kb.size(), 2u);
  EXPECT_EQ(ka[0], kb[0]);
  EXPECT_NE(ka[1], kb[1]);
  EXPECT_EQ(ka[1], ChainPageKey(ka[0], absl::MakeConstSpan(a).subspan(16, 16), x));
  EXPECT_TRUE(ChainPageKeys(a, 0, x).empty());
}

}  // namespace
}  // namespace pagoda
