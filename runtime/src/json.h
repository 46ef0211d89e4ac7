// A small strict JSON reader for the bundle manifest: bounded depth, no exceptions, every
// malformed input is an error message rather than undefined behaviour (the manifest is untrusted
// until verified, and fuzzed).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mlrt::json {

class Value {
 public:
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject };

  Kind kind() const { return kind_; }
  bool is_object() const { return kind_ == Kind::kObject; }
  bool is_array() const { return kind_ == Kind::kArray; }
  bool is_string() const { return kind_ == Kind::kString; }
  // True for numbers written without fraction/exponent that fit int64.
  bool is_int() const { return kind_ == Kind::kNumber && is_int_; }

  int64_t as_int() const { return int_; }
  double as_double() const { return double_; }
  bool as_bool() const { return bool_; }
  const std::string& as_string() const { return string_; }
  const std::vector<Value>& items() const { return items_; }
  const std::vector<std::pair<std::string, Value>>& members() const { return members_; }
  // Object member lookup; nullptr when absent or not an object.
  const Value* find(std::string_view key) const;

 private:
  friend class Parser;
  Kind kind_ = Kind::kNull;
  bool bool_ = false;
  bool is_int_ = false;
  int64_t int_ = 0;
  double double_ = 0;
  std::string string_;
  std::vector<Value> items_;
  std::vector<std::pair<std::string, Value>> members_;
};

// Parses `text` completely. On failure returns false and sets *error ("at byte N: ...").
bool Parse(std::string_view text, Value* out, std::string* error);

}  // namespace mlrt::json
