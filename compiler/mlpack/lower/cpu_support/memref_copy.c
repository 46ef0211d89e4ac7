/* memrefCopy: MLIR lowers a memref.copy between non-contiguous memrefs to this call. The torch-mlir
 * wheel ships no runner-utils library, so every generated shared object links this copy in.
 * ABI (MLIR's UnrankedMemRefType): {int64 rank; descriptor*}, descriptor =
 * {base*, data*, int64 offset, int64 sizes[rank], int64 strides[rank]}. Allocation-free. */
#include <stdint.h>
#include <string.h>

typedef struct {
  int64_t rank;
  void *descriptor;
} UnrankedMemRef;

typedef struct {
  char *base;
  char *data;
  int64_t offset;
  int64_t sizes_and_strides[]; /* sizes[rank] then strides[rank] */
} RankedDescriptor;

void memrefCopy(int64_t elem_size, UnrankedMemRef *src_arg, UnrankedMemRef *dst_arg) {
  const int64_t rank = src_arg->rank;
  RankedDescriptor *src = (RankedDescriptor *)src_arg->descriptor;
  RankedDescriptor *dst = (RankedDescriptor *)dst_arg->descriptor;
  const int64_t *sizes = src->sizes_and_strides;
  const int64_t *src_strides = src->sizes_and_strides + rank;
  const int64_t *dst_strides = dst->sizes_and_strides + rank;
  char *s = src->data + src->offset * elem_size;
  char *d = dst->data + dst->offset * elem_size;

  int64_t total = 1;
  int contiguous = 1;
  for (int64_t r = rank - 1, expect = 1; r >= 0; --r) {
    if (sizes[r] == 0) return;
    if (sizes[r] != 1 && (src_strides[r] != expect || dst_strides[r] != expect)) contiguous = 0;
    expect *= sizes[r];
    total *= sizes[r];
  }
  if (contiguous) {
    memcpy(d, s, (size_t)(total * elem_size));
    return;
  }
  /* Copy whole innermost rows at a time when they are contiguous on both sides (padding copies:
   * the common case), else element by element; an odometer walks the outer dimensions. */
  const int rows_contiguous = rank > 0 && src_strides[rank - 1] == 1 && dst_strides[rank - 1] == 1;
  const int64_t outer_rank = rows_contiguous ? rank - 1 : rank;
  const int64_t run = rows_contiguous ? sizes[rank - 1] : 1;
  int64_t index[rank > 0 ? rank : 1];
  memset(index, 0, sizeof(index));
  for (int64_t n = 0; n < total / run; ++n) {
    memcpy(d, s, (size_t)(run * elem_size));
    for (int64_t r = outer_rank - 1; r >= 0; --r) {
      ++index[r];
      s += src_strides[r] * elem_size;
      d += dst_strides[r] * elem_size;
      if (index[r] < sizes[r]) break;
      s -= src_strides[r] * sizes[r] * elem_size;
      d -= dst_strides[r] * sizes[r] * elem_size;
      index[r] = 0;
    }
  }
}
