// The event bus: fan-out to every subscriber in order, a bounded queue that turns overflow into one
// `resync`, heartbeat throttling per key, and closing.
#include "manager/events/bus.h"

#include <gtest/gtest.h>

#include <thread>

namespace ev = marchproxy::manager::events;
using namespace std::chrono_literals;

namespace {
ev::Event make(std::int64_t id) {
  ev::Event e;
  e.type = "object";
  e.resource = "clusters";
  e.id = id;
  e.action = "created";
  return e;
}
}  // namespace

TEST(EventBus, EverySubscriberGetsEveryEventInOrder) {
  ev::Bus bus;
  auto a = bus.subscribe(), b = bus.subscribe();
  bus.publish(make(1));
  bus.publish(make(2));
  for (auto* s : {&a, &b}) {
    auto e1 = (*s)->next(1s), e2 = (*s)->next(1s);
    ASSERT_TRUE(e1 && e2);
    EXPECT_EQ(e1->id, 1);
    EXPECT_EQ(e2->id, 2);
    EXPECT_LT(e1->seq, e2->seq);
  }
  EXPECT_FALSE(a->next(0ms));
}

TEST(EventBus, ASlowSubscriberIsToldToResyncInsteadOfBlockingPublishers) {
  ev::Bus bus;
  auto slow = bus.subscribe(2);
  for (int i = 0; i < 5; ++i) bus.publish(make(i));
  auto e = slow->next(1s);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->type, "resync");
  EXPECT_FALSE(slow->next(0ms));  // the backlog is dropped with it
  bus.publish(make(9));
  EXPECT_EQ(slow->next(1s)->id, 9);
}

TEST(EventBus, ThrottledPublishDropsRepeatsOfTheSameKeyOnly) {
  ev::Bus bus;
  auto s = bus.subscribe();
  EXPECT_TRUE(bus.publishThrottled("heartbeat:1", make(1), 1h));
  EXPECT_FALSE(bus.publishThrottled("heartbeat:1", make(1), 1h));
  EXPECT_TRUE(bus.publishThrottled("heartbeat:2", make(2), 1h));
  EXPECT_TRUE(bus.publishThrottled("heartbeat:1", make(1), 0ms));
  EXPECT_EQ(s->next(1s)->id, 1);
  EXPECT_EQ(s->next(1s)->id, 2);
  EXPECT_EQ(s->next(1s)->id, 1);
  EXPECT_FALSE(s->next(0ms));
}

TEST(EventBus, CloseWakesAWaitingSubscriberAndUnsubscribeStopsDelivery) {
  ev::Bus bus;
  auto s = bus.subscribe();
  std::thread t([&] { bus.unsubscribe(s); });
  EXPECT_FALSE(s->next(10s));  // returns on close, not after 10 s
  t.join();
  EXPECT_TRUE(s->closed());
  EXPECT_EQ(bus.subscribers(), 0u);
  bus.publish(make(1));
  EXPECT_FALSE(s->next(0ms));
}

TEST(EventBus, EventJsonCarriesTheClusterForScoping) {
  auto e = make(3);
  e.cluster_id = 7;
  auto j = e.toJson();
  EXPECT_EQ(j["cluster_id"], 7);
  EXPECT_EQ(j["type"], "object");
  e.cluster_id.reset();
  EXPECT_TRUE(e.toJson()["cluster_id"].is_null());
}
