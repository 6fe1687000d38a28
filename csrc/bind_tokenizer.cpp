// pybind11 bindings of the fused tokenizer (ftib.kernels._C.Tokenizer). The typed API is
// ftib.kernels.tokenizer.FastTokenizer, which validates tokenizer.json before building one.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "ftib/tokenizer.h"
#include "ftib/utf8.h"

namespace py = pybind11;
using ftib::tok::Tokenizer;

namespace {

// UTF-8 view of a Python str (CPython caches it on the object; ASCII strings are not
// copied). A lone surrogate cannot be encoded: ValueError naming its index.
std::string_view utf8_view(PyObject *obj, const char *what) {
  if (!PyUnicode_Check(obj))
    throw py::type_error(std::string(what) + " must be str, got " + Py_TYPE(obj)->tp_name);
  Py_ssize_t n = 0;
  const char *p = PyUnicode_AsUTF8AndSize(obj, &n);
  if (!p) {
    PyErr_Clear();
    const Py_ssize_t len = PyUnicode_GetLength(obj);
    Py_ssize_t at = -1;
    for (Py_ssize_t i = 0; i < len && at < 0; ++i) {
      const Py_UCS4 c = PyUnicode_ReadChar(obj, i);
      if (c >= 0xD800 && c <= 0xDFFF) at = i;
    }
    throw py::value_error(std::string(what) + " holds a lone surrogate" +
                          (at >= 0 ? " at index " + std::to_string(at) : std::string()) +
                          "; it is not valid Unicode text and cannot be encoded as UTF-8");
  }
  if (static_cast<std::uint64_t>(n) >= (1ULL << 32))
    throw py::value_error(std::string(what) + " is 4 GiB or longer; split it");
  return {p, static_cast<std::size_t>(n)};
}

std::vector<std::string_view> utf8_views(const py::sequence &texts) {
  const std::size_t n = py::len(texts);
  std::vector<std::string_view> out;
  out.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    py::object t = texts[i];
    const std::string what = "texts[" + std::to_string(i) + "]";
    out.push_back(utf8_view(t.ptr(), what.c_str()));
  }
  return out;
}

// The Python side of a Tokenizer: the native object and one Python int per id, so that
// building result lists is an INCREF per id rather than an allocation (the list building
// runs under the GIL and would otherwise dominate the encode time).
struct Bound {
  std::unique_ptr<Tokenizer> tok;
  std::vector<py::object> ints;

  py::list to_list(const std::vector<std::uint32_t> &ids) const {
    PyObject *out = PyList_New(static_cast<Py_ssize_t>(ids.size()));
    if (!out) throw py::error_already_set();
    for (std::size_t i = 0; i < ids.size(); ++i) {
      PyObject *o = ints[ids[i]].ptr();  // ids come from the tokenizer: < ints.size()
      Py_INCREF(o);
      PyList_SET_ITEM(out, static_cast<Py_ssize_t>(i), o);
    }
    return py::reinterpret_steal<py::list>(out);
  }
};

template <class T, class V>
py::array owned_array(std::unique_ptr<std::vector<V>> v) {
  static_assert(sizeof(T) == sizeof(V), "same element size");
  auto *raw = v.release();
  py::capsule owner(raw, [](void *p) { delete static_cast<std::vector<V> *>(p); });
  return py::array_t<T>({static_cast<py::ssize_t>(raw->size())}, {static_cast<py::ssize_t>(sizeof(T))},
                        reinterpret_cast<const T *>(raw->data()), owner);
}

}  // namespace

void bind_tokenizer(py::module_ &m) {
  py::class_<Bound>(m, "Tokenizer", "Fused byte-level BPE tokenizer (private; use ftib.kernels.tokenizer)")
      .def(py::init([](int split, bool ignore_merges, const std::vector<std::string> &tokens,
                       const std::vector<std::uint32_t> &ids,
                       py::array_t<std::uint32_t, py::array::c_style | py::array::forcecast> merges,
                       const std::vector<std::tuple<std::string, std::uint32_t, bool>> &added,
                       const std::vector<std::pair<std::uint32_t, std::vector<std::uint32_t>>> &char_map,
                       bool drop_zero_width, bool nfc) {
             if (split != 0 && split != 1) throw std::invalid_argument("unknown split kind");
             if (tokens.size() != ids.size()) throw std::invalid_argument("tokens and ids differ in length");
             ftib::tok::Config c;
             c.split = static_cast<ftib::tok::SplitKind>(split);
             c.ignore_merges = ignore_merges;
             c.vocab.reserve(tokens.size());
             for (std::size_t i = 0; i < tokens.size(); ++i) c.vocab.emplace_back(tokens[i], ids[i]);
             c.merges.assign(merges.data(), merges.data() + merges.size());
             for (const auto &[content, id, special] : added) c.added.push_back({content, id, special});
             for (const auto &[cp, to] : char_map) c.char_map.emplace_back(cp, std::u32string(to.begin(), to.end()));
             c.drop_zero_width = drop_zero_width;
             c.nfc = nfc;
             auto bound = std::make_unique<Bound>();
             {
               py::gil_scoped_release release;
               bound->tok = std::make_unique<Tokenizer>(c);
             }
             bound->ints.reserve(bound->tok->vocab_size());
             for (std::size_t i = 0; i < bound->tok->vocab_size(); ++i) bound->ints.push_back(py::int_(i));
             return bound;
           }),
           py::arg("split"), py::arg("ignore_merges"), py::arg("tokens"), py::arg("ids"), py::arg("merges"),
           py::arg("added"), py::arg("char_map"), py::arg("drop_zero_width"), py::arg("nfc"))
      .def(
          "encode",
          [](const Bound &b, py::object text, bool normalize) {
            const std::string_view sv = utf8_view(text.ptr(), "text");
            std::vector<std::uint32_t> ids;
            {
              py::gil_scoped_release release;
              b.tok->encode(sv, normalize, ids);
            }
            return b.to_list(ids);
          },
          py::arg("text"), py::arg("normalize"))
      .def(
          "encode_batch",
          [](const Bound &b, const py::sequence &texts, bool normalize, int threads) {
            const auto views = utf8_views(texts);
            std::vector<std::vector<std::uint32_t>> out;
            {
              py::gil_scoped_release release;
              b.tok->encode_batch(views, normalize, threads, out);
            }
            py::list res(out.size());
            for (std::size_t i = 0; i < out.size(); ++i) res[i] = b.to_list(out[i]);
            return res;
          },
          py::arg("texts"), py::arg("normalize"), py::arg("threads"))
      .def(
          "encode_batch_flat",
          [](const Bound &b, const py::sequence &texts, bool normalize, int threads) {
            const auto views = utf8_views(texts);
            auto ids = std::make_unique<std::vector<std::uint32_t>>();
            auto offsets = std::make_unique<std::vector<std::int64_t>>();
            {
              py::gil_scoped_release release;
              b.tok->encode_batch(views, normalize, threads, *ids, *offsets);
            }
            // Ids are < 2**31 (checked when the tokenizer is built): int32 for torch/numpy.
            return py::make_tuple(owned_array<std::int32_t>(std::move(ids)),
                                  owned_array<std::int64_t>(std::move(offsets)));
          },
          py::arg("texts"), py::arg("normalize"), py::arg("threads"))
      .def(
          "pretokenize",
          [](const Bound &b, py::object text, bool normalize) {
            const std::string_view sv = utf8_view(text.ptr(), "text");
            std::vector<std::string> pieces;
            {
              py::gil_scoped_release release;
              pieces = b.tok->pretokenize(sv, normalize);
            }
            py::list out;
            for (const auto &p : pieces) out.append(py::bytes(p));
            return out;
          },
          py::arg("text"), py::arg("normalize"))
      .def(
          "decode",
          [](const Bound &b, py::array_t<std::int64_t, py::array::c_style | py::array::forcecast> ids,
             bool skip_special) {
            std::vector<std::uint32_t> v(static_cast<std::size_t>(ids.size()));
            const std::int64_t *p = ids.data();
            for (std::size_t i = 0; i < v.size(); ++i) {
              if (p[i] < 0 || p[i] > 0xFFFFFFFFLL)
                throw std::invalid_argument("unknown token id " + std::to_string(p[i]) + " at position " + std::to_string(i));
              v[i] = static_cast<std::uint32_t>(p[i]);
            }
            std::string out;
            {
              py::gil_scoped_release release;
              out = b.tok->decode(v.data(), v.size(), skip_special);
            }
            return py::bytes(out);
          },
          py::arg("ids"), py::arg("skip_special"))
      .def_property_readonly("vocab_size", [](const Bound &b) { return b.tok->vocab_size(); });

  m.def(
      "normalize_tibetan",
      [](py::object text) {
        const std::string_view sv = utf8_view(text.ptr(), "text");
        std::string out;
        {
          py::gil_scoped_release release;
          const std::vector<char32_t> cps = ftib::utf8_decode(sv);
          const std::u32string norm = ftib::tok::normalize_tibetan(std::u32string_view(cps.data(), cps.size()));
          for (char32_t c : norm) ftib::utf8_append(out, c);
        }
        return py::str(out);
      },
      py::arg("text"), "ftib's Tibetan normaliser (rules 1-5), native.");
}
