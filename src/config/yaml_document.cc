#include "config/yaml_document.h"

#include <fmt/format.h>
#include <yaml-cpp/depthguard.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/exceptions.h>
#include <yaml-cpp/parser.h>

#include <algorithm>
#include <istream>
#include <streambuf>
#include <unordered_map>

namespace marchproxy::config::yaml {

namespace {

SourcePos posOf(const YAML::Mark& m) {
  if (m.is_null() || m.line < 0) return {};
  return {m.line + 1, m.column + 1};
}

// Reads the caller's text in place (std::istringstream would copy up to 16 MiB).
class ViewBuf : public std::streambuf {
 public:
  explicit ViewBuf(std::string_view s) {
    char* p = const_cast<char*>(s.data());  // read-only: the get area is never written through
    setg(p, p, p + s.size());
  }
};

}  // namespace

// Turns parser events into Document values. Iterative: the open collections are a stack.
class Builder : public YAML::EventHandler {
 public:
  explicit Builder(std::vector<Value>& values) : values_(values) {}

  void OnDocumentStart(const YAML::Mark& mark) override {
    ++documents_;
    lastDocument_ = mark;
  }
  void OnDocumentEnd() override {}

  void OnNull(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    add(Value::Kind::kNull, mark, anchor);
  }

  void OnAlias(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    if (building()) return;
    auto it = anchors_.find(anchor);
    if (it == anchors_.end()) {  // yaml-cpp reports unknown anchors itself; be safe regardless
      fail(mark, "an alias refers to an unknown anchor");
      return;
    }
    if (std::find(open_.begin(), open_.end(), it->second) != open_.end()) {
      fail(mark, "an alias refers to a node that contains it");
      return;
    }
    attach(it->second);
  }

  void OnScalar(const YAML::Mark& mark, const std::string& tag, YAML::anchor_t anchor,
                const std::string& value) override {
    if (building()) return;
    uint32_t i = add(Value::Kind::kScalar, mark, anchor);
    values_[i].text = value;
    values_[i].quoted = tag == "!" || tag == "tag:yaml.org,2002:str";
  }

  void OnSequenceStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t anchor,
                       YAML::EmitterStyle::value) override {
    if (building()) return;
    open_.push_back(add(Value::Kind::kList, mark, anchor));
  }
  void OnSequenceEnd() override { close(); }

  void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t anchor,
                  YAML::EmitterStyle::value) override {
    if (building()) return;
    open_.push_back(add(Value::Kind::kMap, mark, anchor));
  }
  void OnMapEnd() override { close(); }

  int documents() const { return documents_; }
  const YAML::Mark& lastDocument() const { return lastDocument_; }
  const std::optional<Diagnostic>& error() const { return error_; }

 private:
  // True when events must be ignored: past the first document (an error reported by the caller) or
  // after an error of our own.
  bool building() const { return documents_ > 1 || error_.has_value(); }

  uint32_t add(Value::Kind kind, const YAML::Mark& mark, YAML::anchor_t anchor) {
    if (building()) return 0;
    auto i = static_cast<uint32_t>(values_.size());
    Value& v = values_.emplace_back();
    v.kind = kind;
    v.pos = posOf(mark);
    if (anchor != YAML::NullAnchor) anchors_[anchor] = i;
    attach(i);
    return i;
  }

  void attach(uint32_t i) {
    if (!open_.empty()) values_[open_.back()].items.push_back(i);
  }

  void close() {
    if (!building() && !open_.empty()) open_.pop_back();
  }

  void fail(const YAML::Mark& mark, std::string message) {
    SourcePos p = posOf(mark);
    error_ = Diagnostic{p.line, p.column, "", std::move(message)};
  }

  std::vector<Value>& values_;
  std::vector<uint32_t> open_;  // collections being filled, innermost last
  std::unordered_map<YAML::anchor_t, uint32_t> anchors_;
  int documents_ = 0;
  YAML::Mark lastDocument_;
  std::optional<Diagnostic> error_;
};

std::optional<Diagnostic> Document::parse(std::string_view text) {
  size_t i = text.substr(0, 3) == "\xEF\xBB\xBF" ? 3 : 0;
  while (i < text.size() && (text[i] == ' ' || text[i] == '\t' || text[i] == '\r' || text[i] == '\n')) ++i;
  if (i < text.size() && (text[i] == '{' || text[i] == '[')) {
    auto json_error = parseJson(text);
    if (!json_error) return std::nullopt;
    // YAML's flow style reads much like JSON: a hand-written file may still be valid YAML.
    if (!parseYaml(text)) return std::nullopt;
    return json_error;
  }
  return parseYaml(text);
}

std::optional<Diagnostic> Document::parseYaml(std::string_view text) {
  values_.clear();
  std::optional<Diagnostic> error;
  try {
    ViewBuf buf(text);
    std::istream in(&buf);
    YAML::Parser parser(in);
    Builder builder(values_);
    if (parser.HandleNextDocument(builder)) {
      error = builder.error();
      // A second document is an error; asking for exactly one more is what keeps this finite.
      if (!error && parser.HandleNextDocument(builder)) {
        SourcePos p = posOf(builder.lastDocument());
        error = Diagnostic{
            p.line, p.column, "",
            "unexpected content after the end of the document (only one YAML document is allowed)"};
      }
    }
  } catch (const YAML::DeepRecursion& e) {
    SourcePos p = posOf(e.mark);  // yaml-cpp's own message for this one is "bad file"
    error = Diagnostic{p.line, p.column, "", fmt::format("nesting is too deep (over {} levels)", e.depth())};
  } catch (const YAML::Exception& e) {
    SourcePos p = posOf(e.mark);
    error = Diagnostic{p.line, p.column, "", "invalid YAML: " + e.msg};
  } catch (const std::exception& e) {
    error = Diagnostic{0, 0, "", std::string("invalid YAML: ") + e.what()};
  }
  if (error) values_.clear();
  return error;
}

}  // namespace marchproxy::config::yaml
