// pybind11 bindings of the private module ftib.kernels._C. Python code never imports
// this module directly: ftib.kernels re-exports a typed API (kernels/_native.py).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "ftib/build_info.h"
#include "ftib/utf8.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "ftib native kernels (private; use ftib.kernels)";

  m.def("build_info", [] {
    const ftib::BuildInfo info = ftib::build_info();
    py::dict d;
    d["compiler"] = info.compiler;
    d["build_type"] = info.build_type;
    d["sanitizers"] = info.sanitizers;
    d["hardware_threads"] = info.hardware_threads;
    d["cplusplus"] = info.cplusplus;
    return d;
  });

  // std::invalid_argument arrives in Python as ValueError (pybind11's translation).
  m.def(
      "utf8_codepoints",
      [](py::bytes data) {
        std::string s = data;
        py::gil_scoped_release release;
        std::vector<char32_t> cps = ftib::utf8_decode(s);
        py::gil_scoped_acquire acquire;
        py::list out(cps.size());
        for (std::size_t i = 0; i < cps.size(); ++i) out[i] = static_cast<std::uint32_t>(cps[i]);
        return out;
      },
      py::arg("data"),
      "Strictly decode UTF-8 bytes to code points; ValueError names the first bad byte offset.");
}
