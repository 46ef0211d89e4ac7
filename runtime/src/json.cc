#include "json.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>

namespace mlrt::json {

const Value* Value::find(std::string_view key) const {
  if (kind_ != Kind::kObject) return nullptr;
  for (const auto& [k, v] : members_) {
    if (k == key) return &v;
  }
  return nullptr;
}

class Parser {
 public:
  explicit Parser(std::string_view text) : s_(text) {}

  bool ParseDocument(Value* out, std::string* error) {
    SkipSpace();
    bool ok = ParseValue(out, 0) && (SkipSpace(), pos_ == s_.size() || Fail("trailing characters"));
    if (!ok) *error = "at byte " + std::to_string(pos_) + ": " + error_;
    return ok;
  }

 private:
  static constexpr int kMaxDepth = 64;

  bool Fail(const char* what) {
    if (error_.empty()) error_ = what;
    return false;
  }
  void SkipSpace() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\r' || s_[pos_] == '\t')) ++pos_;
  }
  bool Consume(char c) {
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool Literal(std::string_view word) {
    if (s_.substr(pos_, word.size()) != word) return Fail("invalid literal");
    pos_ += word.size();
    return true;
  }

  bool ParseValue(Value* v, int depth) {
    if (depth > kMaxDepth) return Fail("nesting too deep");
    if (pos_ >= s_.size()) return Fail("unexpected end of input");
    switch (s_[pos_]) {
      case '{': return ParseObject(v, depth);
      case '[': return ParseArray(v, depth);
      case '"': v->kind_ = Value::Kind::kString; return ParseString(&v->string_);
      case 't': v->kind_ = Value::Kind::kBool; v->bool_ = true; return Literal("true");
      case 'f': v->kind_ = Value::Kind::kBool; v->bool_ = false; return Literal("false");
      case 'n': v->kind_ = Value::Kind::kNull; return Literal("null");
      default: return ParseNumber(v);
    }
  }

  bool ParseObject(Value* v, int depth) {
    v->kind_ = Value::Kind::kObject;
    ++pos_;  // '{'
    SkipSpace();
    if (Consume('}')) return true;
    while (true) {
      SkipSpace();
      std::string key;
      if (pos_ >= s_.size() || s_[pos_] != '"') return Fail("expected a string key");
      if (!ParseString(&key)) return false;
      SkipSpace();
      if (!Consume(':')) return Fail("expected ':'");
      SkipSpace();
      Value member;
      if (!ParseValue(&member, depth + 1)) return false;
      v->members_.emplace_back(std::move(key), std::move(member));
      SkipSpace();
      if (Consume('}')) return true;
      if (!Consume(',')) return Fail("expected ',' or '}'");
    }
  }

  bool ParseArray(Value* v, int depth) {
    v->kind_ = Value::Kind::kArray;
    ++pos_;  // '['
    SkipSpace();
    if (Consume(']')) return true;
    while (true) {
      SkipSpace();
      Value item;
      if (!ParseValue(&item, depth + 1)) return false;
      v->items_.push_back(std::move(item));
      SkipSpace();
      if (Consume(']')) return true;
      if (!Consume(',')) return Fail("expected ',' or ']'");
    }
  }

  bool Hex4(uint32_t* out) {
    if (s_.size() - pos_ < 4) return Fail("short \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      char c = s_[pos_++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= static_cast<uint32_t>(c - '0');
      else if (c >= 'a' && c <= 'f') v |= static_cast<uint32_t>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= static_cast<uint32_t>(c - 'A' + 10);
      else return Fail("bad hex digit in \\u escape");
    }
    *out = v;
    return true;
  }

  static void AppendUtf8(uint32_t cp, std::string* out) {
    if (cp < 0x80) {
      out->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }

  bool ParseString(std::string* out) {
    ++pos_;  // opening quote
    while (pos_ < s_.size()) {
      char c = s_[pos_++];
      if (c == '"') return true;
      const auto u = static_cast<unsigned char>(c);
      if (u < 0x20) return Fail("control character in string");
      if (u >= 0x80) {  // copy one UTF-8 sequence, validated: error messages quote these strings
        size_t len = (u & 0xE0) == 0xC0 ? 2 : (u & 0xF0) == 0xE0 ? 3 : (u & 0xF8) == 0xF0 ? 4 : 0;
        if (len == 0 || u == 0xC0 || u == 0xC1 || u > 0xF4 || pos_ - 1 + len > s_.size()) return Fail("invalid UTF-8");
        for (size_t k = 1; k < len; ++k) {
          if ((static_cast<unsigned char>(s_[pos_ - 1 + k]) & 0xC0) != 0x80) return Fail("invalid UTF-8");
        }
        out->append(s_.substr(pos_ - 1, len));
        pos_ += len - 1;
        continue;
      }
      if (c != '\\') {
        out->push_back(c);
        continue;
      }
      if (pos_ >= s_.size()) break;
      char e = s_[pos_++];
      switch (e) {
        case '"': out->push_back('"'); break;
        case '\\': out->push_back('\\'); break;
        case '/': out->push_back('/'); break;
        case 'b': out->push_back('\b'); break;
        case 'f': out->push_back('\f'); break;
        case 'n': out->push_back('\n'); break;
        case 'r': out->push_back('\r'); break;
        case 't': out->push_back('\t'); break;
        case 'u': {
          uint32_t cp = 0;
          if (!Hex4(&cp)) return false;
          if (cp >= 0xD800 && cp <= 0xDBFF) {  // surrogate pair
            uint32_t lo = 0;
            if (!Consume('\\') || !Consume('u') || !Hex4(&lo) || lo < 0xDC00 || lo > 0xDFFF) {
              return Fail("unpaired surrogate in \\u escape");
            }
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return Fail("unpaired surrogate in \\u escape");
          }
          AppendUtf8(cp, out);
          break;
        }
        default: return Fail("bad escape in string");
      }
    }
    return Fail("unterminated string");
  }

  bool ParseNumber(Value* v) {
    size_t start = pos_;
    bool integral = true;
    Consume('-');
    if (pos_ >= s_.size() || !IsDigit(s_[pos_])) return Fail("invalid value");
    if (s_[pos_] == '0') {
      ++pos_;
    } else {
      while (pos_ < s_.size() && IsDigit(s_[pos_])) ++pos_;
    }
    if (Consume('.')) {
      integral = false;
      if (pos_ >= s_.size() || !IsDigit(s_[pos_])) return Fail("digit expected after '.'");
      while (pos_ < s_.size() && IsDigit(s_[pos_])) ++pos_;
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      integral = false;
      ++pos_;
      if (!Consume('+')) Consume('-');
      if (pos_ >= s_.size() || !IsDigit(s_[pos_])) return Fail("digit expected in exponent");
      while (pos_ < s_.size() && IsDigit(s_[pos_])) ++pos_;
    }
    std::string text(s_.substr(start, pos_ - start));  // NUL-terminated copy for strtod/strtoll
    v->kind_ = Value::Kind::kNumber;
    v->double_ = std::strtod(text.c_str(), nullptr);
    if (integral) {
      errno = 0;
      long long i = std::strtoll(text.c_str(), nullptr, 10);
      if (errno == 0) {
        v->is_int_ = true;
        v->int_ = static_cast<int64_t>(i);
      }
    }
    return true;
  }
  static bool IsDigit(char c) { return c >= '0' && c <= '9'; }

  std::string_view s_;
  size_t pos_ = 0;
  std::string error_;
};

bool Parse(std::string_view text, Value* out, std::string* error) {
  *out = Value();
  return Parser(text).ParseDocument(out, error);
}

}  // namespace mlrt::json
