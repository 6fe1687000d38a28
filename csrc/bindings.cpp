// pybind11 bindings of the private module ftib.kernels._C. Python code never imports
// this module directly: ftib.kernels re-exports a typed API (kernels/_native.py).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "ftib/build_info.h"
#include "ftib/grpo_kernels.h"
#include "ftib/utf8.h"

namespace py = pybind11;

// Defined in bind_tokenizer.cpp (issue 5: fused tokenizer).
void bind_tokenizer(py::module_ &m);

PYBIND11_MODULE(_C, m) {
  m.doc() = "ftib native kernels (private; use ftib.kernels)";
  bind_tokenizer(m);

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
  // GRPO kernels (issue 7). Buffers arrive as raw addresses of contiguous torch tensors
  // (tensor.data_ptr()); ftib.kernels.similarity / .advantages check shapes, dtypes and
  // devices before calling, so these stay thin. The GIL is released while they run.
  m.def(
      "masked_mean_pool",
      [](std::uintptr_t hidden, int kind, std::uintptr_t mask, std::int64_t N, std::int64_t T,
         std::int64_t H, std::uintptr_t out, int threads) {
        py::gil_scoped_release release;
        ftib::masked_mean_pool(reinterpret_cast<const void *>(hidden),
                               static_cast<ftib::ScalarKind>(kind),
                               reinterpret_cast<const float *>(mask), N, T, H,
                               reinterpret_cast<float *>(out), threads);
      },
      py::arg("hidden"), py::arg("kind"), py::arg("mask"), py::arg("N"), py::arg("T"),
      py::arg("H"), py::arg("out"), py::arg("threads"),
      "Masked mean pooling of hidden (N, T, H) into out (N, H) float32.");
  m.def(
      "embedding_similarity",
      [](std::uintptr_t hidden, int kind, std::uintptr_t mask, std::int64_t N, std::int64_t T,
         std::int64_t H, std::uintptr_t ref, std::int64_t M, std::uintptr_t index,
         bool has_threshold, double threshold, std::uintptr_t out, int threads) {
        py::gil_scoped_release release;
        ftib::embedding_similarity(
            reinterpret_cast<const void *>(hidden), static_cast<ftib::ScalarKind>(kind),
            reinterpret_cast<const float *>(mask), N, T, H, reinterpret_cast<const float *>(ref),
            M, reinterpret_cast<const std::int64_t *>(index), has_threshold, threshold,
            reinterpret_cast<float *>(out), threads);
      },
      py::arg("hidden"), py::arg("kind"), py::arg("mask"), py::arg("N"), py::arg("T"),
      py::arg("H"), py::arg("ref"), py::arg("M"), py::arg("index"), py::arg("has_threshold"),
      py::arg("threshold"), py::arg("out"), py::arg("threads"),
      "Pool -> normalise -> cosine with ref[index] -> threshold rescale; out (N,) float32.");
  m.def(
      "group_advantages",
      [](std::uintptr_t rewards, std::int64_t n, std::int64_t group_size, int scale, double eps,
         std::uintptr_t adv, std::uintptr_t mean, std::uintptr_t std_, int threads) {
        py::gil_scoped_release release;
        return ftib::group_advantages(reinterpret_cast<const float *>(rewards), n, group_size,
                                      static_cast<ftib::AdvantageScale>(scale), eps,
                                      reinterpret_cast<float *>(adv),
                                      reinterpret_cast<float *>(mean),
                                      reinterpret_cast<float *>(std_), threads);
      },
      py::arg("rewards"), py::arg("n"), py::arg("group_size"), py::arg("scale"), py::arg("eps"),
      py::arg("adv"), py::arg("mean"), py::arg("std"), py::arg("threads"),
      "GRPO advantages (TRL semantics); returns the share of zero-std elements.");
}
