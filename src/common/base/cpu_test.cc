#include "common/base/cpu.h"

#include <gtest/gtest.h>
#include <sched.h>

#include <thread>

namespace marchproxy::cpu {
namespace {

Topology twoNodes() {
  // CPUs 0-3 on node 0 and 4-7 on node 1, interleaved in the mask order a BIOS might give.
  Topology t;
  t.allowed = {0, 1, 2, 3, 4, 5, 6, 7};
  for (int c = 0; c < 8; ++c) t.node[c] = c < 4 ? 0 : 1;
  return t;
}

TEST(CpuList, ParsesRangesAndSinglesSortedWithoutDuplicates) {
  EXPECT_EQ(parseList("\t0-3,8,10-11\n"), (std::vector<int>{0, 1, 2, 3, 8, 10, 11}));
  EXPECT_EQ(parseList("5,1,1"), (std::vector<int>{1, 5}));
  EXPECT_TRUE(parseList("").empty());
  EXPECT_TRUE(parseList("3-1").empty());
  EXPECT_TRUE(parseList("a").empty());
  EXPECT_TRUE(parseList("1,,2").empty());
  EXPECT_TRUE(parseList("-1").empty());
}

TEST(CpuList, FormatsRuns) {
  EXPECT_EQ(formatList({0, 1, 2, 3, 8, 10, 11}), "0-3,8,10-11");
  EXPECT_EQ(formatList({}), "");
  EXPECT_EQ(parseList(formatList({2, 4, 5, 6, 9})), (std::vector<int>{2, 4, 5, 6, 9}));
}

TEST(CpuPlan, OffLeavesEveryWorkerUnpinned) {
  auto p = plan(3, false, {}, twoNodes());
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(*p, (std::vector<int>{-1, -1, -1}));
  EXPECT_EQ(describePlan(*p, twoNodes()), "not pinned");
}

TEST(CpuPlan, AutoFillsOneNodeBeforeTheNextAndWraps) {
  Topology t = twoNodes();
  t.allowed = {1, 4, 5, 6};  // a cpuset: one CPU of node 0, three of node 1
  t.node = {{1, 1}, {4, 0}, {5, 1}, {6, 0}};
  auto p = plan(5, true, {}, t);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(*p, (std::vector<int>{4, 6, 1, 5, 4}));
}

TEST(CpuPlan, AutoUsesOnlyAllowedCpus) {
  Topology t;
  t.allowed = {2, 3};  // no NUMA information
  auto p = plan(2, true, {}, t);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(*p, (std::vector<int>{2, 3}));
  EXPECT_EQ(describePlan(*p, t), "worker-0 cpu 2, worker-1 cpu 3");
}

TEST(CpuPlan, ExplicitListRepeatsAndNamesNodes) {
  auto p = plan(3, false, {6, 1}, twoNodes());
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(*p, (std::vector<int>{6, 1, 6}));
  EXPECT_EQ(describePlan(*p, twoNodes()), "worker-0 cpu 6 (node 1), worker-1 cpu 1 (node 0), worker-2 cpu 6 (node 1)");
}

TEST(CpuPlan, ExplicitCpuOutsideTheMaskIsRefusedByName) {
  Topology t;
  t.allowed = {0, 1};
  auto p = plan(2, false, {0, 7}, t);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.error().message, "cpu_affinity: CPU 7 is not available to this process (allowed: 0-1)");
}

TEST(CpuTopology, ThisProcessHasAtLeastOneAllowedCpuAndCanPinToIt) {
  Topology t = read();
  ASSERT_FALSE(t.allowed.empty());
  std::string pinned, refused;
  std::thread th([&] {  // its own thread: the test runner's stays unpinned
    pinned = pinThisThread(t.allowed.front());
    refused = pinThisThread(CPU_SETSIZE - 1);  // no machine here has that many CPUs
  });
  th.join();
  EXPECT_EQ(pinned, "");
  EXPECT_NE(refused, "");
}

}  // namespace
}  // namespace marchproxy::cpu
