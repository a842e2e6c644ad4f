// The JSON reader (json_document.cc) must build exactly the tree the YAML reader builds for the same
// JSON text — the decoder relies on it — and reject malformed JSON with a precise position.
#include <gtest/gtest.h>

#include <string>

#include "config/loader.h"
#include "config/yaml_document.h"

namespace marchproxy::config::yaml {
namespace {

// A canonical dump of a tree: kinds, scalar text, quoting and structure (positions apart).
std::string dump(const Document& d, uint32_t i = 0) {
  const Value& v = d.at(i);
  switch (v.kind) {
    case Value::Kind::kNull:
      return "~";
    case Value::Kind::kScalar:
      return (v.quoted ? "s:" : "p:") + v.text;
    case Value::Kind::kList: {
      std::string out = "[";
      for (uint32_t k : v.items) out += dump(d, k) + ",";
      return out + "]";
    }
    case Value::Kind::kMap: {
      std::string out = "{";
      for (size_t k = 0; k + 1 < v.items.size(); k += 2)
        out += dump(d, v.items[k]) + "=" + dump(d, v.items[k + 1]) + ",";
      return out + "}";
    }
  }
  return "?";
}

std::string viaJson(std::string_view text) {
  Document d;
  auto err = d.parseJson(text);
  EXPECT_FALSE(err) << (err ? err->toString() : "") << "\n" << text;
  return err || !d.root() ? std::string("<error>") : dump(d);
}

std::string viaYaml(std::string_view text) {
  Document d;
  auto err = d.parseYaml(text);
  EXPECT_FALSE(err) << (err ? err->toString() : "") << "\n" << text;
  return err || !d.root() ? std::string("<error>") : dump(d);
}

Diagnostic jsonError(std::string_view text) {
  Document d;
  auto err = d.parseJson(text);
  EXPECT_TRUE(err.has_value()) << "accepted: " << text;
  return err.value_or(Diagnostic{});
}

TEST(JsonDocument, BuildsTheSameTreeAsTheYamlReader) {
  const char* cases[] = {
      R"({"a": 1, "b": "1", "c": true, "d": null, "e": [1, 2.5, -3e2, "x"], "f": {}, "g": []})",
      R"({"nested": {"list": [{"k": "v"}, {"k": ["deep", {"x": false}]}]}})",
      R"(  {"spaces"  :	"and tabs" ,
          "newlines": [
            1 ,
            2
          ]} )",
      R"({"escapes": "q\" b\\ s\/ \b\f\n\r\t", "unicode": "\u00e9\u20ac"})",
      R"({"utf8": "héllo €😀", "empty": ""})",
      R"([1, "two", [3], {"four": 4}])",
  };
  for (const char* c : cases) EXPECT_EQ(viaJson(c), viaYaml(c)) << c;
}

TEST(JsonDocument, NumbersKeepTheirTextAndStringsAreQuoted) {
  EXPECT_EQ(viaJson(R"({"port": 8080, "name": "8080", "f": -0.5e-3})"), "{s:port=p:8080,s:name=s:8080,s:f=p:-0.5e-3,}");
  EXPECT_EQ(viaJson(R"("\ud83d\ude00")"), "s:\xF0\x9F\x98\x80");
}

TEST(JsonDocument, PositionsAreWhereEachValueStarts) {
  Document d;
  ASSERT_FALSE(d.parseJson("{\n  \"a\": [\n    1,\n    \"x\"\n  ]\n}"));
  const Value& root = *d.root();
  EXPECT_EQ(root.pos.line, 1);
  EXPECT_EQ(root.pos.column, 1);
  const Value& list = d.at(root.items[1]);
  EXPECT_EQ(list.pos.line, 2);
  EXPECT_EQ(list.pos.column, 8);
  EXPECT_EQ(d.at(list.items[1]).pos.line, 4);
  EXPECT_EQ(d.at(list.items[1]).pos.column, 5);
}

TEST(JsonDocument, RejectsMalformedJsonWithLineAndColumn) {
  struct Case {
    const char* text;
    int line, column;
    const char* message;
  } cases[] = {
      {"{\"a\": 1,}", 1, 9, "expected a member name in double quotes after ','"},
      {"[1, 2,]", 1, 7, "unexpected ']': a value is missing"},
      {"{\"a\" 1}", 1, 6, "expected ':' after the member name"},
      {"{\"a\": 01}", 1, 8, "numbers must not have leading zeros"},
      {"{\"a\": 1.}", 1, 9, "a number needs a digit after '.'"},
      {"{\"a\": -}", 1, 8, "a number needs a digit after '-'"},
      {"{\"a\": 1e}", 1, 9, "a number needs a digit in its exponent"},
      {"{\"a\": 12abc}", 1, 9, "unexpected character 'a' after a number"},
      {"{\"a\": \"x\\q\"}", 1, 9, "invalid escape \\'q' in a string"},
      {"{\"a\": \"\\ud800\"}", 1, 8, "a \\u escape of a high surrogate must be followed by its low surrogate"},
      {"{\"a\": \"\\udc00\"}", 1, 8, "a \\u escape of a lone low surrogate"},
      {"{\"a\": \"\\u12G4\"}", 1, 8, "\\u must be followed by four hex digits"},
      {"{\n\"a\": \"two\nlines\"}", 2, 10, "a string must not contain a raw line break (write \\n)"},
      {"{\"a\": \"\x01\"}", 1, 8, "a string must not contain the control character 0x01 unescaped"},
      {"{\"a\": \"\xC3\x28\"}", 1, 8, "invalid UTF-8 in a string"},
      {"{\"a\": \"\xED\xA0\x80\"}", 1, 8, "invalid UTF-8 in a string"},
      {"{\"a\": \"\xC0\xAF\"}", 1, 8, "invalid UTF-8 in a string"},
      {"{\"a\": 'x'}", 1, 7, "strings must be in double quotes"},
      {"{a: 1}", 1, 2, "expected a member name in double quotes or '}'"},
      {"{\"a\": 1} {}", 1, 10, "unexpected content after the end of the JSON document"},
      {"\"x\" 1", 1, 5, "unexpected content after the end of the JSON document"},
      {"{\"a\": [1, 2}", 1, 12, "expected ',' or ']' after an array element"},
      {"{\"a\": 1 \"b\": 2}", 1, 9, "expected ',' or '}' after an object member"},
      {"{\"a\": [1,\n 2", 2, 3, "unexpected end of input: an object or array is not closed"},
      {"{\"a\": \"open", 1, 12, "unexpected end of input inside a string"},
      {"{\"a\": tru}", 1, 7, "unexpected character 't' where a value should start"},
      {"{\"a\": truex}", 1, 7, "unexpected character 't' where a value should start"},
      {"{\"a\": }", 1, 7, "unexpected '}': a value is missing"},
  };
  for (const Case& c : cases) {
    Diagnostic d = jsonError(c.text);
    EXPECT_EQ(d.message, std::string("invalid JSON: ") + c.message) << c.text;
    EXPECT_EQ(d.line, c.line) << c.text;
    EXPECT_EQ(d.column, c.column) << c.text;
  }
}

TEST(JsonDocument, BoundsNestingWithoutRecursing) {
  std::string deep(100000, '[');
  Diagnostic d = jsonError(deep);
  EXPECT_EQ(d.message, "nesting is too deep (over 500 levels)");
  std::string ok = std::string(499, '[') + std::string(499, ']');
  Document doc;
  EXPECT_FALSE(doc.parseJson(ok));
}

TEST(JsonDocument, EmptyAndByteOrderMark) {
  Document d;
  EXPECT_FALSE(d.parseJson("  \n "));
  EXPECT_EQ(d.root(), nullptr);
  EXPECT_FALSE(d.parseJson("\xEF\xBB\xBF{\"a\": 1}"));
  EXPECT_EQ(dump(d), "{s:a=p:1,}");
}

TEST(JsonDocument, ParseFallsBackToYamlFlowStyle) {
  // Starts like JSON but is YAML flow style (unquoted keys): still a valid config.
  Document d;
  EXPECT_FALSE(d.parse("{schema: 1, listeners: [{name: a, port: 80}]}"));
  EXPECT_EQ(dump(d), "{p:schema=p:1,p:listeners=[{p:name=p:a,p:port=p:80,},],}");
  // Broken for both: the JSON error is the one reported.
  auto err = d.parse("{\"schema\": 1, \"a\": [}");
  ASSERT_TRUE(err);
  EXPECT_EQ(err->message.rfind("invalid JSON: ", 0), 0u) << err->message;
}

TEST(JsonDocument, LoadsAManagerSizedSnapshotThroughTheSameDecoder) {
  std::string text = R"({"schema": 1, "listeners": [{"name": "l", "address": "127.0.0.1", "port": 8080}],
  "clusters": [{"name": "c", "endpoints": [{"address": "127.0.0.1:9000"}]}],
  "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [)";
  for (int i = 0; i < 2000; ++i) {
    if (i) text += ",";
    text += R"({"name": "r)" + std::to_string(i) + R"(", "match": {"prefix": "/p)" + std::to_string(i) +
            R"(/"}, "forward": {"cluster": "c"}})";
  }
  text += "]}]}";
  LoadResult r = loadString(text);
  ASSERT_TRUE(r.ok()) << (r.errors.empty() ? "" : r.errors[0].toString());
  EXPECT_EQ(r.snapshot->virtual_hosts.at(0).routes.size(), 2000u);
  EXPECT_EQ(r.snapshot->virtual_hosts[0].routes[1999].match.path, "/p1999/");
  // A field error in JSON still names its line and path.
  LoadResult bad = loadString("{\"schema\": 1,\n \"listeners\": [{\"name\": \"l\", \"port\": 70000}]}");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.errors.at(0).line, 2);
  EXPECT_EQ(bad.errors[0].path, "listeners[0].port");
}

}  // namespace
}  // namespace marchproxy::config::yaml
