// How the native module was built, recorded in every run's manifest.json.
#pragma once

#include <string>

namespace ftib {

struct BuildInfo {
  std::string compiler;
  std::string build_type;
  bool sanitizers;
  unsigned hardware_threads;
  long cplusplus;
};

BuildInfo build_info();

}  // namespace ftib
