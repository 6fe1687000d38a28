#include "ftib/build_info.h"

#include <thread>

namespace ftib {

BuildInfo build_info() {
  BuildInfo info;
#if defined(__clang__)
  info.compiler = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info.compiler = std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
  info.compiler = "msvc " + std::to_string(_MSC_VER);
#else
  info.compiler = "unknown";
#endif
  info.build_type = FTIB_BUILD_TYPE;
#ifdef FTIB_SANITIZE
  info.sanitizers = true;
#else
  info.sanitizers = false;
#endif
  info.hardware_threads = std::thread::hardware_concurrency();
  info.cplusplus = __cplusplus;
  return info;
}

}  // namespace ftib
