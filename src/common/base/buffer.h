#pragma once
// A contiguous byte buffer with a consumed prefix and free tail, for socket reads that a parser
// then views without copying. Not thread-safe: owned by one connection on one worker.
#include <cstddef>
#include <cstring>
#include <memory>
#include <string_view>

namespace marchproxy {

class Buffer {
 public:
  // Memory is allocated on first prepare(); shrinkTo() trims it while empty, so that an idle
  // keep-alive connection keeps only a small buffer (as nginx does).
  explicit Buffer(size_t initial_capacity = 4096) : initial_(initial_capacity) {}

  // Readable bytes.
  std::string_view view() const { return data_ ? std::string_view{data_.get() + begin_, end_ - begin_} : std::string_view{}; }
  size_t size() const { return end_ - begin_; }
  bool empty() const { return begin_ == end_; }
  void consume(size_t n) {
    begin_ += n;
    if (begin_ == end_) begin_ = end_ = 0;  // cheap reset keeps the next read at the front
  }
  void clear() { begin_ = end_ = 0; }

  // Free space at the tail, at least `min` bytes (moves readable bytes to the front, grows up to
  // `max_capacity`). Returns the writable span's size, which may be < min only if max is reached.
  size_t prepare(size_t min, size_t max_capacity) {
    if (!data_) {
      cap_ = initial_ < max_capacity ? initial_ : max_capacity;
      if (cap_ < min && min <= max_capacity) cap_ = min;
      data_.reset(new char[cap_]);
    }
    if (cap_ - end_ >= min) return cap_ - end_;
    if (begin_ > 0) {
      std::memmove(data_.get(), data_.get() + begin_, end_ - begin_);
      end_ -= begin_;
      begin_ = 0;
      if (cap_ - end_ >= min) return cap_ - end_;
    }
    size_t want = end_ + min;
    if (want > max_capacity) want = max_capacity;
    if (want > cap_) {
      size_t newcap = cap_ * 2;
      while (newcap < want) newcap *= 2;
      if (newcap > max_capacity) newcap = max_capacity;
      std::unique_ptr<char[]> n(new char[newcap]);
      std::memcpy(n.get(), data_.get(), end_);
      data_ = std::move(n);
      cap_ = newcap;
    }
    return cap_ - end_;
  }
  char* tail() { return data_.get() + end_; }
  size_t tailSize() const { return cap_ - end_; }
  void commit(size_t n) { end_ += n; }
  size_t capacity() const { return cap_; }

  // Storage hand-over, so that an idle connection owns no buffer at all: release() gives the
  // storage away (only while empty; the caller may pool it) and adopt() takes a block of `cap`
  // bytes. Without storage, the next prepare() allocates as at first.
  bool hasStorage() const { return data_ != nullptr; }
  std::unique_ptr<char[]> release() {
    begin_ = end_ = cap_ = 0;
    return std::move(data_);
  }
  void adopt(std::unique_ptr<char[]> p, size_t cap) {
    data_ = std::move(p);
    cap_ = cap;
    begin_ = end_ = 0;
  }

  // If nothing is buffered and the buffer grew beyond `capacity`, goes back to that size.
  void shrinkTo(size_t capacity) {
    if (empty() && cap_ > capacity) {
      data_.reset(new char[capacity]);
      cap_ = capacity;
      begin_ = end_ = 0;
    }
  }

 private:
  std::unique_ptr<char[]> data_;
  size_t initial_;
  size_t cap_ = 0;
  size_t begin_ = 0;
  size_t end_ = 0;
};

}  // namespace marchproxy
