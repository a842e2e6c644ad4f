#pragma once
// Whole-snapshot rules: ranges, syntax of names/hosts/domains/headers, regexes that must compile,
// cross references (a route's cluster must exist), uniqueness, and the warnings a human wants to
// hear about (unused clusters, routes that can never match).
//
// validate() is the gate every snapshot passes before it is published, whatever built it: the
// loader calls it on decoded files, the manager on the snapshots it compiles. It never throws and
// reports everything it finds in one pass.
#include <string>
#include <unordered_map>
#include <vector>

#include "config/diagnostic.h"
#include "config/model.h"

namespace marchproxy::config {

// Returns the errors (empty = the snapshot may be published). Warnings go to *warnings when given.
// Positions come from the SourcePos fields of the enclosing object (line 0 for snapshots built in
// code).
std::vector<Diagnostic> validate(const Snapshot& s, std::vector<Diagnostic>* warnings = nullptr);

namespace detail {

// Field path -> where its value was written. Recorded by the loader for every value it reads, so
// that a cross-field error lands on the line of the offending value ("forward.cluster"), not just on
// the enclosing route.
using PositionIndex = std::unordered_map<std::string, SourcePos>;

void validateInto(const Snapshot& s, const PositionIndex* positions, std::vector<Diagnostic>& errors,
                  std::vector<Diagnostic>& warnings);

}  // namespace detail
}  // namespace marchproxy::config
