// Heatmaps: host-side argument parsing and checks shared by the CPU and CUDA entry points.
// The Python wrappers raise ValueError first; these TORCH_CHECKs guard direct torch.ops calls.
#pragma once

#include <ATen/ATen.h>

#include "heatmaps/heatmaps.h"

namespace fastops {
namespace heatmaps {

inline int parse_render_mode(c10::string_view s) {
  if (s == "msra") return kMSRA;
  if (s == "udp") return kUDP;
  if (s == "dark") return kDARK;
  TORCH_CHECK(false, "render_gaussian_heatmaps: mode must be 'msra', 'udp' or 'dark', got '", std::string(s), "'");
  return 0;
}

inline int parse_render_kernel(c10::string_view s) {
  if (s == "gaussian") return kGaussian;
  if (s == "cauchy") return kCauchy;
  TORCH_CHECK(false, "render_gaussian_heatmaps: kernel must be 'gaussian' or 'cauchy', got '", std::string(s), "'");
  return 0;
}

inline int parse_radius_variant(c10::string_view s) {
  if (s == "centernet") return 0;
  if (s == "cornernet") return 1;
  TORCH_CHECK(false, "gaussian_radius: variant must be 'centernet' or 'cornernet', got '", std::string(s), "'");
  return 0;
}

inline int parse_refine(c10::string_view s) {
  if (s == "none") return kNone;
  if (s == "quarter") return kQuarter;
  if (s == "hourglass") return kHourglass;
  if (s == "dark") return kDark;
  if (s == "dark_udp") return kDarkUDP;
  TORCH_CHECK(false, "heatmap_argmax: refine must be one of none, quarter, hourglass, dark, dark_udp, got '",
              std::string(s), "'");
  return 0;
}

inline int parse_pool_mode(c10::string_view s) {
  if (s == "top") return kTop;
  if (s == "bottom") return kBottom;
  if (s == "left") return kLeft;
  if (s == "right") return kRight;
  TORCH_CHECK(false, "corner_pool: mode must be 'top', 'bottom', 'left' or 'right', got '", std::string(s), "'");
  return 0;
}

inline bool is_float_type(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline void check_map_size(int64_t height, int64_t width, const char* op) {
  TORCH_CHECK(height >= 0 && width >= 0 && height < (1 << 20) && width < (1 << 20),
              op, ": heatmap_size must be non-negative and < 2^20, got (", height, ", ", width, ")");
}

inline void check_render_args(const at::Tensor& kp, const c10::optional<at::Tensor>& visible, int64_t height,
                              int64_t width, double sigma) {
  TORCH_CHECK(kp.dim() == 4 && kp.size(3) == 2, "render_gaussian_heatmaps: keypoints must be [B, N, K, 2], got ",
              kp.sizes());
  TORCH_CHECK(is_float_type(kp.scalar_type()), "render_gaussian_heatmaps: keypoints must be floating point");
  check_map_size(height, width, "render_gaussian_heatmaps");
  TORCH_CHECK(sigma > 0 && std::isfinite(sigma) && sigma < 1e6, "render_gaussian_heatmaps: sigma must be positive and finite, got ",
              sigma);
  if (visible.has_value()) {
    TORCH_CHECK(visible->dim() == 3 && visible->size(0) == kp.size(0) && visible->size(1) == kp.size(1) &&
                    visible->size(2) == kp.size(2),
                "render_gaussian_heatmaps: visible must be [B, N, K] like keypoints, got ", visible->sizes());
    TORCH_CHECK(visible->device() == kp.device(), "render_gaussian_heatmaps: visible must be on keypoints' device");
  }
}

inline void check_center_args(const at::Tensor& centers, const at::Tensor& radii, const at::Tensor& labels,
                              int64_t num_classes, int64_t height, int64_t width) {
  TORCH_CHECK(centers.dim() == 3 && centers.size(2) == 2, "render_center_heatmap: centers must be [B, N, 2], got ",
              centers.sizes());
  TORCH_CHECK(is_float_type(centers.scalar_type()), "render_center_heatmap: centers must be floating point");
  TORCH_CHECK(radii.dim() == 2 && radii.size(0) == centers.size(0) && radii.size(1) == centers.size(1) &&
                  radii.scalar_type() == at::kLong,
              "render_center_heatmap: radii must be an int64 [B, N] tensor, got ", radii.sizes(), " ",
              radii.scalar_type());
  TORCH_CHECK(labels.dim() == 2 && labels.size(0) == centers.size(0) && labels.size(1) == centers.size(1) &&
                  labels.scalar_type() == at::kLong,
              "render_center_heatmap: labels must be an int64 [B, N] tensor, got ", labels.sizes(), " ",
              labels.scalar_type());
  TORCH_CHECK(radii.device() == centers.device() && labels.device() == centers.device(),
              "render_center_heatmap: radii and labels must be on centers' device");
  TORCH_CHECK(num_classes >= 0, "render_center_heatmap: num_classes must be >= 0, got ", num_classes);
  check_map_size(height, width, "render_center_heatmap");
}

inline void check_argmax_args(const at::Tensor& hm, int refine, int64_t blur_kernel) {
  TORCH_CHECK(hm.dim() == 4, "heatmap_argmax: heatmaps must be [B, K, H, W], got ", hm.sizes());
  TORCH_CHECK(is_float_type(hm.scalar_type()), "heatmap_argmax: heatmaps must be floating point");
  TORCH_CHECK(hm.size(0) * hm.size(1) == 0 || (hm.size(2) > 0 && hm.size(3) > 0),
              "heatmap_argmax: heatmaps must have H, W > 0, got ", hm.sizes());
  TORCH_CHECK(hm.size(2) < (1 << 20) && hm.size(3) < (1 << 20), "heatmap_argmax: heatmaps too large");
  if (refine == kDark || refine == kDarkUDP)
    TORCH_CHECK(blur_kernel >= 1 && blur_kernel <= kMaxBlur && blur_kernel % 2 == 1,
                "heatmap_argmax: blur_kernel must be odd and in [1, ", kMaxBlur, "], got ", blur_kernel);
}

inline void check_soft_argmax_args(const at::Tensor& hm) {
  TORCH_CHECK(hm.dim() == 4, "soft_argmax: heatmaps must be [B, K, H, W], got ", hm.sizes());
  TORCH_CHECK(is_float_type(hm.scalar_type()), "soft_argmax: heatmaps must be floating point");
  TORCH_CHECK(hm.size(0) * hm.size(1) == 0 || (hm.size(2) > 0 && hm.size(3) > 0),
              "soft_argmax: heatmaps must have H, W > 0, got ", hm.sizes());
}

inline void check_peaks_args(const at::Tensor& hm, int64_t k, int64_t kernel, const char* name) {
  TORCH_CHECK(hm.dim() == 4, name, " must be [B, C, H, W], got ", hm.sizes());
  TORCH_CHECK(is_float_type(hm.scalar_type()), name, " must be floating point");
  TORCH_CHECK(k >= 0, "k must be >= 0, got ", k);
  TORCH_CHECK(kernel >= 1 && kernel % 2 == 1, "kernel must be a positive odd int, got ", kernel);
  TORCH_CHECK(hm.size(1) * hm.size(2) * hm.size(3) < (int64_t(1) << 40), name, " too large");
}

inline void check_decode_args(const at::Tensor& heat, const at::Tensor& wh, const c10::optional<at::Tensor>& reg,
                              int64_t k) {
  check_peaks_args(heat, k, 3, "heat");
  TORCH_CHECK(wh.dim() == 4 && wh.size(0) == heat.size(0) && wh.size(1) == 2 && wh.size(2) == heat.size(2) &&
                  wh.size(3) == heat.size(3),
              "centernet_decode: wh must be [B, 2, H, W] like heat, got ", wh.sizes());
  TORCH_CHECK(wh.scalar_type() == heat.scalar_type() && wh.device() == heat.device(),
              "centernet_decode: wh must have heat's dtype and device");
  if (reg.has_value()) {
    TORCH_CHECK(reg->dim() == 4 && reg->size(0) == heat.size(0) && reg->size(1) == 2 &&
                    reg->size(2) == heat.size(2) && reg->size(3) == heat.size(3),
                "centernet_decode: reg must be [B, 2, H, W] like heat, got ", reg->sizes());
    TORCH_CHECK(reg->scalar_type() == heat.scalar_type() && reg->device() == heat.device(),
                "centernet_decode: reg must have heat's dtype and device");
  }
}

inline void check_pool_args(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, "corner_pool: input must be [B, C, H, W], got ", x.sizes());
  TORCH_CHECK(is_float_type(x.scalar_type()), "corner_pool: input must be floating point");
  TORCH_CHECK(x.size(2) < (1 << 30) && x.size(3) < (1 << 30), "corner_pool: input too large");
}

}  // namespace heatmaps
}  // namespace fastops
