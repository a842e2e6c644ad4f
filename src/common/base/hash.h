#pragma once
// Small hashing helpers shared by the data plane.
#include <cstdint>

namespace marchproxy {

// The splitmix64 finaliser: a bijective 64-bit mix with full avalanche. Applied to weak hashes
// (a raw integer, FNV) before they index a table or a ring, and the step of splitmix64 PRNGs.
constexpr uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBULL;
  x ^= x >> 31;
  return x;
}

}  // namespace marchproxy
