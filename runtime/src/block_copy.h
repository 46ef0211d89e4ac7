// Padding and cutting between the caller's shapes and a bucket's (dynamic dims): the leading
// block min(src_shape, dst_shape) of one C-order tensor copied into another of the same rank, as
// a sequence of contiguous row copies. Shared by the CPU executor (memcpy) and the CUDA executor
// (async host<->device or device<->device copies), so both pad and cut the same bytes.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace mlrt {

// Calls copy(src_offset, dst_offset, bytes) for each contiguous run of the leading block (offsets
// in bytes from each tensor's start). Any rank (0 included), any element size; nothing when the
// block is empty. Trailing dims that are whole in both tensors join one run, so a block cut along
// dim 0 alone is one call.
template <typename Copy>
void ForEachBlockRow(const std::vector<int64_t>& src_shape, const std::vector<int64_t>& dst_shape, size_t itemsize,
                     Copy&& copy) {
  const size_t rank = src_shape.size();
  std::vector<int64_t> block(rank);
  for (size_t d = 0; d < rank; ++d) {
    block[d] = std::min(src_shape[d], dst_shape[d]);
    if (block[d] == 0) return;
  }
  size_t split = rank;  // dims [split, rank) are copied as one contiguous run
  size_t row = itemsize;
  while (split > 0 && src_shape[split - 1] == dst_shape[split - 1]) {
    --split;
    row *= static_cast<size_t>(src_shape[split]);
  }
  if (split > 0) {  // the innermost partial dim: its first block[d] entries
    --split;
    row *= static_cast<size_t>(block[split]);
  }
  // Strides in bytes of dims [0, split).
  std::vector<size_t> src_stride(rank + 1, itemsize), dst_stride(rank + 1, itemsize);
  for (size_t d = rank; d-- > 0;) {
    src_stride[d] = src_stride[d + 1] * static_cast<size_t>(src_shape[d]);
    dst_stride[d] = dst_stride[d + 1] * static_cast<size_t>(dst_shape[d]);
  }
  std::vector<int64_t> index(split, 0);
  while (true) {
    size_t src_offset = 0, dst_offset = 0;
    for (size_t d = 0; d < split; ++d) {
      src_offset += static_cast<size_t>(index[d]) * src_stride[d + 1];
      dst_offset += static_cast<size_t>(index[d]) * dst_stride[d + 1];
    }
    copy(src_offset, dst_offset, row);
    size_t d = split;  // next index, odometer style; done when dim 0 wraps (or there is no outer dim)
    while (true) {
      if (d == 0) return;
      --d;
      if (++index[d] < block[d]) break;
      index[d] = 0;
    }
  }
}

}  // namespace mlrt
