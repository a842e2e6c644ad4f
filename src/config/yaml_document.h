#pragma once
// Internal to src/config: one YAML (or JSON) document as a tree of values with their positions,
// built from yaml-cpp's parser events rather than through YAML::Load().
//
// Why not YAML::Node: we need exactly one document and its marks, and yaml-cpp 0.7 gets in the way
// of both. Its LoadAll() never returns on some malformed input (it yields empty documents forever
// without consuming any), and its node graph costs a lot of small allocations. Driving the parser
// ourselves lets us ask for at most two documents (finite, and the second one is the error), builds
// the tree iteratively (no recursion of ours on nested input; yaml-cpp's parser stops at 500
// levels), and keeps aliases as shared indexes, never copies, so a "billion laughs" file costs its
// own size here. The decoder budgets the expansion when it walks the tree.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config/diagnostic.h"
#include "config/model.h"

namespace marchproxy::config::yaml {

struct Value {
  enum class Kind : uint8_t { kNull, kScalar, kList, kMap };
  Kind kind = Kind::kNull;
  bool quoted = false;  // a quoted (or !!str) scalar: a string even when it reads like a number
  SourcePos pos;
  std::string text;  // scalars
  std::vector<uint32_t>
      items;  // lists: elements; maps: key, value, key, value... (indexes into the document)

  bool isNull() const { return kind == Kind::kNull; }
  bool isScalar() const { return kind == Kind::kScalar; }
  bool isList() const { return kind == Kind::kList; }
  bool isMap() const { return kind == Kind::kMap; }
};

class Document {
 public:
  // Parses text. On failure (syntax, nesting, a second document, an alias cycle) the error is
  // returned, with its position, and the document is empty. Text that starts with '{' or '[' is
  // read as JSON first (json_document.cc: ~5x faster than yaml-cpp on manager snapshots); if it is
  // not valid JSON it is read as YAML (flow style), and the JSON error is reported when both fail.
  std::optional<Diagnostic> parse(std::string_view text);
  // Strict RFC 8259 JSON only (no YAML fallback); errors are prefixed "invalid JSON:".
  std::optional<Diagnostic> parseJson(std::string_view text);
  // YAML only (yaml-cpp); errors are prefixed "invalid YAML:".
  std::optional<Diagnostic> parseYaml(std::string_view text);

  // Null when the document is empty (nothing but comments).
  const Value* root() const { return values_.empty() ? nullptr : &values_[0]; }
  const Value& at(uint32_t index) const { return values_[index]; }

 private:
  friend class Builder;
  std::vector<Value> values_;  // [0] is the root; never resized once parse() returns
};

}  // namespace marchproxy::config::yaml
