// Rendering targets: the schemas and the host-side checks that the CPU and CUDA entry points both call.
// The Python wrappers (fastops/ops/render.py) raise ValueError first; these TORCH_CHECKs guard direct
// torch.ops calls.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

#include "render/render.h"

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  m.def("render_gaussian_heatmaps(Tensor keypoints, Tensor? visible, int height, int width, float sigma, "
        "str mode, str kernel) -> (Tensor, Tensor)");
  m.def("render_center_heatmap(Tensor centers, Tensor radii, Tensor labels, int num_classes, int height, "
        "int width) -> Tensor");
  m.def("gaussian_radius(Tensor heights, Tensor widths, float min_overlap, str variant) -> Tensor");
}

namespace fastops {
namespace heatmaps {

int parse_render_mode(c10::string_view s) {
  if (s == "msra") return kMSRA;
  if (s == "udp") return kUDP;
  if (s == "dark") return kDARK;
  TORCH_CHECK(false, "render_gaussian_heatmaps: mode must be 'msra', 'udp' or 'dark', got '", std::string(s), "'");
  return 0;
}

int parse_render_kernel(c10::string_view s) {
  if (s == "gaussian") return kGaussian;
  if (s == "cauchy") return kCauchy;
  TORCH_CHECK(false, "render_gaussian_heatmaps: kernel must be 'gaussian' or 'cauchy', got '", std::string(s), "'");
  return 0;
}

int parse_radius_variant(c10::string_view s) {
  if (s == "centernet") return kCenterNet;
  if (s == "cornernet") return kCornerNet;
  TORCH_CHECK(false, "gaussian_radius: variant must be 'centernet' or 'cornernet', got '", std::string(s), "'");
  return 0;
}

void check_render_args(const at::Tensor& kp, const c10::optional<at::Tensor>& visible, int64_t height,
                       int64_t width, double sigma) {
  TORCH_CHECK(kp.dim() == 4 && kp.size(3) == 2, "render_gaussian_heatmaps: keypoints must be [B, N, K, 2], got ",
              kp.sizes());
  TORCH_CHECK(is_float_type(kp.scalar_type()), "render_gaussian_heatmaps: keypoints must be floating point");
  check_map_size(height, width, "render_gaussian_heatmaps");
  TORCH_CHECK(sigma >= kMinSigma && sigma < kMaxSigma, "render_gaussian_heatmaps: sigma must be in [", kMinSigma,
              ", ", kMaxSigma, "), got ", sigma);
  if (visible.has_value()) {
    TORCH_CHECK(visible->dim() == 3 && visible->size(0) == kp.size(0) && visible->size(1) == kp.size(1) &&
                    visible->size(2) == kp.size(2),
                "render_gaussian_heatmaps: visible must be [B, N, K] like keypoints, got ", visible->sizes());
    TORCH_CHECK(visible->device() == kp.device(), "render_gaussian_heatmaps: visible must be on keypoints' device");
  }
}

RenderArgs prepare_render(const at::Tensor& keypoints, const c10::optional<at::Tensor>& visible, int64_t height,
                          int64_t width, double sigma, c10::string_view mode, c10::string_view kernel) {
  RenderArgs a;
  a.mode = parse_render_mode(mode);
  a.kern = parse_render_kernel(kernel);
  check_render_args(keypoints, visible, height, width, sigma);
  a.kp = keypoints.contiguous();
  if (visible.has_value()) a.vis = visible->to(a.kp.scalar_type()).contiguous();
  const int64_t B = a.kp.size(0), N = a.kp.size(1), K = a.kp.size(2);
  a.heatmaps = at::empty({B, K, height, width}, a.kp.options());
  a.weights = at::empty({B, N, K}, a.kp.options());
  return a;
}

void check_center_args(const at::Tensor& centers, const at::Tensor& radii, const at::Tensor& labels,
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
  TORCH_CHECK(num_classes >= 0 && num_classes < (int64_t(1) << 31), "render_center_heatmap: num_classes must be in "
              "[0, 2^31), got ", num_classes);
  check_map_size(height, width, "render_center_heatmap");
  // data-dependent: one reduction on either device (a sync on CUDA, as torchvision's checks of indices)
  if (labels.numel() > 0)
    TORCH_CHECK(labels.max().item<int64_t>() < num_classes, "render_center_heatmap: labels must be < num_classes (",
                num_classes, "), got ", labels.max().item<int64_t>());
}

void check_radius_args(const at::Tensor& heights, const at::Tensor& widths, double min_overlap) {
  TORCH_CHECK(heights.sizes() == widths.sizes(), "gaussian_radius: heights and widths must have the same shape");
  TORCH_CHECK(is_float_type(heights.scalar_type()), "gaussian_radius: heights must be floating point");
  TORCH_CHECK(widths.device() == heights.device(), "gaussian_radius: widths must be on heights' device");
  TORCH_CHECK(min_overlap > 0 && min_overlap < 1, "gaussian_radius: min_overlap must be in (0, 1), got ",
              min_overlap);
}

RadiusArgs prepare_radius(const at::Tensor& heights, const at::Tensor& widths, double min_overlap,
                          c10::string_view variant) {
  RadiusArgs a;
  a.variant = parse_radius_variant(variant);
  check_radius_args(heights, widths, min_overlap);
  a.h = heights.contiguous();
  a.w = widths.to(heights.scalar_type()).contiguous();
  a.out = at::empty_like(a.h, at::MemoryFormat::Contiguous);
  return a;
}

}  // namespace heatmaps
}  // namespace fastops
