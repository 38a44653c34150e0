// panoptic_fuse: schema and the host-side argument checks shared by the CPU and CUDA kernels.
#include <torch/library.h>

#include <vector>

#include "panoptic/panoptic.h"

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  m.def(
      "panoptic_fuse(Tensor semantic_logits, Tensor mask_logits, Tensor boxes, Tensor labels, int num_stuff, "
      "int[]? output_size=None, bool void=True) -> Tensor");
  // The constants fastops/registrations/panoptic.py mirrors: [void id, Inst fields].
  m.def("_panoptic_constants() -> int[]");
}

namespace fastops {
namespace panoptic {

std::pair<int64_t, int64_t> check_args(const at::Tensor& sem, const at::Tensor& masks, const at::Tensor& boxes,
                                       const at::Tensor& labels, int64_t S, at::OptionalIntArrayRef output_size,
                                       bool with_void) {
  TORCH_CHECK(sem.dim() == 3, "panoptic_fuse: semantic_logits must be [S+T, h, w], got shape ", sem.sizes());
  TORCH_CHECK(at::isFloatingType(sem.scalar_type()), "panoptic_fuse: semantic_logits must be floating point");
  TORCH_CHECK(masks.dim() == 3, "panoptic_fuse: mask_logits must be [N, M, M], got shape ", masks.sizes());
  TORCH_CHECK(masks.scalar_type() == sem.scalar_type(),
              "panoptic_fuse: mask_logits must have semantic_logits' dtype ", sem.dtype(), ", got ", masks.dtype());
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, "panoptic_fuse: boxes must be [N, 4], got shape ",
              boxes.sizes());
  TORCH_CHECK(at::isFloatingType(boxes.scalar_type()), "panoptic_fuse: boxes must be floating point");
  TORCH_CHECK(labels.dim() == 1, "panoptic_fuse: labels must be [N], got shape ", labels.sizes());
  TORCH_CHECK(labels.scalar_type() == at::kLong || labels.scalar_type() == at::kInt,
              "panoptic_fuse: labels must be int64 or int32, got ", labels.dtype());
  const int64_t N = masks.size(0);
  TORCH_CHECK(boxes.size(0) == N && labels.size(0) == N, "panoptic_fuse: mask_logits, boxes and labels must ",
              "have the same N, got ", N, ", ", boxes.size(0), ", ", labels.size(0));
  TORCH_CHECK(N == 0 || (masks.size(1) > 0 && masks.size(2) > 0), "panoptic_fuse: mask_logits must be non-empty");
  TORCH_CHECK(S >= 0 && S <= sem.size(0), "panoptic_fuse: num_stuff must be in [0, ", sem.size(0), "], got ", S);
  TORCH_CHECK(S > 0 || N > 0 || with_void,
              "panoptic_fuse: nothing to fuse: num_stuff is 0, there are no instances and void is False");
  TORCH_CHECK(sem.device() == masks.device() && sem.device() == boxes.device() && sem.device() == labels.device(),
              "panoptic_fuse: all tensors must be on the same device");
  int64_t H = sem.size(1), W = sem.size(2);
  if (output_size.has_value()) {
    TORCH_CHECK(output_size->size() == 2 && (*output_size)[0] >= 0 && (*output_size)[1] >= 0,
                "panoptic_fuse: output_size must be (H, W) with non-negative sizes, got ", *output_size);
    H = (*output_size)[0];
    W = (*output_size)[1];
    TORCH_CHECK((H == 0 || sem.size(1) > 0) && (W == 0 || sem.size(2) > 0),
                "panoptic_fuse: cannot upsample empty semantic_logits to ", *output_size);
  }
  TORCH_CHECK(H == 0 || W == 0 || sem.size(0) > 0, "panoptic_fuse: semantic_logits must have at least one channel");
  return {H, W};
}

namespace {
std::vector<int64_t> constants() { return {kVoidId, kInstFields}; }
}  // namespace

}  // namespace panoptic
}  // namespace fastops

TORCH_LIBRARY_IMPL(fastops, CompositeExplicitAutograd, m) {
  m.impl("_panoptic_constants", &fastops::panoptic::constants);
}
