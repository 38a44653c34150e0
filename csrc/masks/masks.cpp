// Instance mask assembly (YOLACT postprocess, YOLACT lincomb mask loss, torchvision paste_masks_in_image):
// the schemas and the host-side argument checks that both the CPU and the CUDA entry points call.
// See docs/masks.md and fastops/ops/masks.py.
#include <ATen/ATen.h>
#include <c10/util/safe_numerics.h>
#include <torch/library.h>

#include "masks/masks.h"

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  // protos [Hp,Wp,P], coeffs [N,P], boxes [N,4] relative (x1,y1,x2,y2) -> [N,out_h,out_w]
  // (bool when threshold is given, else protos' dtype).
  m.def("yolact_masks(Tensor protos, Tensor coeffs, Tensor boxes, int out_h, int out_w, bool crop, "
        "float? threshold) -> Tensor");
  // -> loss [N] in protos' dtype (YOLACT's per-detection lincomb mask loss, emulate-RoI-pooling normalised).
  m.def("yolact_mask_loss(Tensor protos, Tensor coeffs, Tensor boxes, Tensor gt_masks) -> Tensor");
  // -> (grad_protos [Hp,Wp,P] contiguous, grad_coeffs [N,P])
  m.def("_yolact_mask_loss_backward(Tensor grad, Tensor protos, Tensor coeffs, Tensor boxes, Tensor gt_masks) "
        "-> (Tensor, Tensor)");
  // masks [N,Mh,Mw], boxes [N,4] image pixels -> [N,1,image_h,image_w] (bool when threshold is given).
  m.def("paste_masks(Tensor masks, Tensor boxes, int image_h, int image_w, int padding, float? threshold) "
        "-> Tensor");
}

namespace fastops {
namespace masks {

namespace {

bool is_float(const at::Tensor& t) { return at::isFloatingType(t.scalar_type()); }

}  // namespace

int64_t checked_output_numel(at::IntArrayRef sizes, at::ScalarType dtype, const char* op, const char* arg) {
  uint64_t numel = 1;
  for (const int64_t s : sizes) {
    TORCH_CHECK(s >= 0, op, ": ", arg, " must be non-negative, got output sizes ", sizes);
    uint64_t next = 0;
    TORCH_CHECK(!c10::mul_overflows(numel, static_cast<uint64_t>(s), &next) && next <= (uint64_t(1) << 62),
                op, ": ", arg, " asks for an output of ", sizes, " elements, more than 2^62");
    numel = next;
  }
  uint64_t bytes = 0;
  TORCH_CHECK(!c10::mul_overflows(numel, static_cast<uint64_t>(c10::elementSize(dtype)), &bytes) &&
                  bytes <= (uint64_t(1) << 62),
              op, ": ", arg, " asks for an output of ", sizes, " ", dtype, " elements, more than 2^62 bytes");
  return static_cast<int64_t>(numel);
}

void check_yolact_common(const at::Tensor& protos, const at::Tensor& coeffs, const at::Tensor& boxes,
                         const char* op) {
  TORCH_CHECK(protos.dim() == 3 && is_float(protos), op, ": protos must be a float [Hp, Wp, P] tensor, got ",
              protos.sizes(), " ", protos.scalar_type());
  TORCH_CHECK(protos.size(0) > 0 && protos.size(1) > 0, op, ": protos must have a non-empty grid, got ",
              protos.sizes());
  TORCH_CHECK(coeffs.dim() == 2 && coeffs.size(1) == protos.size(2), op,
              ": coeffs must be [N, P] with P = protos.size(2), got ", coeffs.sizes());
  TORCH_CHECK(coeffs.scalar_type() == protos.scalar_type(), op, ": coeffs must have protos' dtype ",
              protos.scalar_type(), ", got ", coeffs.scalar_type());
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4 && boxes.size(0) == coeffs.size(0), op,
              ": boxes must be [N, 4] with N = coeffs.size(0), got ", boxes.sizes());
  TORCH_CHECK(is_float(boxes), op, ": boxes must be a float tensor, got ", boxes.scalar_type());
  TORCH_CHECK(coeffs.device() == protos.device() && boxes.device() == protos.device(), op,
              ": coeffs and boxes must be on protos' device ", protos.device());
}

void check_yolact_masks_args(const at::Tensor& protos, const at::Tensor& coeffs, const at::Tensor& boxes,
                             int64_t out_h, int64_t out_w, bool thresholded) {
  check_yolact_common(protos, coeffs, boxes, "yolact_masks");
  TORCH_CHECK(out_h > 0 && out_w > 0, "yolact_masks: output_size must be positive, got ", out_h, "x", out_w);
  checked_output_numel({coeffs.size(0), out_h, out_w}, thresholded ? at::kBool : protos.scalar_type(),
                       "yolact_masks", "output_size");
}

void check_loss_args(const at::Tensor& protos, const at::Tensor& coeffs, const at::Tensor& boxes,
                     const at::Tensor& gt) {
  check_yolact_common(protos, coeffs, boxes, "yolact_mask_loss");
  TORCH_CHECK(gt.dim() == 3 && gt.size(0) == coeffs.size(0) && gt.size(1) == protos.size(0) &&
                  gt.size(2) == protos.size(1),
              "yolact_mask_loss: gt_masks must be [N, Hp, Wp], got ", gt.sizes());
  TORCH_CHECK(gt.scalar_type() == protos.scalar_type(), "yolact_mask_loss: gt_masks must have protos' dtype ",
              protos.scalar_type(), ", got ", gt.scalar_type());
  TORCH_CHECK(gt.device() == protos.device(), "yolact_mask_loss: gt_masks must be on protos' device");
}

void check_loss_backward_args(const at::Tensor& grad, const at::Tensor& protos, const at::Tensor& coeffs,
                              const at::Tensor& boxes, const at::Tensor& gt) {
  check_loss_args(protos, coeffs, boxes, gt);
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == coeffs.size(0) && is_float(grad),
              "yolact_mask_loss backward: grad must be a float [N] tensor, got ", grad.sizes());
  TORCH_CHECK(grad.device() == protos.device(), "yolact_mask_loss backward: grad must be on protos' device");
}

void check_paste_args(const at::Tensor& masks, const at::Tensor& boxes, int64_t H, int64_t W, int64_t padding,
                      bool thresholded) {
  TORCH_CHECK(masks.dim() == 3 && is_float(masks), "paste_masks: masks must be a float [N, Mh, Mw] tensor, got ",
              masks.sizes(), " ", masks.scalar_type());
  // Zero-height masks paste their zero padding (torchvision's result); every kernel reads mask rows in [0, Mh) only.
  TORCH_CHECK(masks.size(2) > 0 && (masks.size(1) > 0 || padding > 0),
              "paste_masks: masks must have a non-zero width, and a non-zero height unless padding > 0, got ",
              masks.sizes(), " with padding ", padding);
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4 && boxes.size(0) == masks.size(0) && is_float(boxes),
              "paste_masks: boxes must be a float [N, 4] tensor with N = masks.size(0), got ", boxes.sizes());
  TORCH_CHECK(boxes.device() == masks.device(), "paste_masks: boxes must be on masks' device");
  TORCH_CHECK(H >= 0 && W >= 0, "paste_masks: image_shape must be non-negative, got ", H, "x", W);
  TORCH_CHECK(padding >= 0 && padding <= kMaxPadding, "paste_masks: padding must be in [0, ", kMaxPadding,
              "], got ", padding);
  checked_output_numel({masks.size(0), 1, H, W}, thresholded ? at::kBool : masks.scalar_type(), "paste_masks",
                       "image_shape");
}

}  // namespace masks
}  // namespace fastops
