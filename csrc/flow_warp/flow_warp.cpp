// flow_warp: schemas and the host-side argument checks shared by the CPU and CUDA kernels.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "flow_warp/flow_warp.h"

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  m.def(
      "flow_warp(Tensor input, Tensor flow, str padding_mode=\"zeros\", bool align_corners=True, "
      "str units=\"pixel\", bool return_mask=False) -> (Tensor, Tensor)");
  m.def(
      "_flow_warp_backward(Tensor grad_output, Tensor input, Tensor flow, str padding_mode, bool align_corners, "
      "str units, bool input_requires_grad, bool flow_requires_grad) -> (Tensor, Tensor)");
}

namespace fastops {
namespace flow_warp {

Options parse_options(c10::string_view padding_mode, bool align_corners, c10::string_view units) {
  TORCH_CHECK(padding_mode == "zeros" || padding_mode == "border",
              "flow_warp: padding_mode must be 'zeros' or 'border', got '", padding_mode, "'");
  TORCH_CHECK(units == "pixel" || units == "normalized",
              "flow_warp: units must be 'pixel' or 'normalized', got '", units, "'");
  return {padding_mode == "border", align_corners, units == "normalized"};
}

void check_inputs(const at::Tensor& input, const at::Tensor& flow) {
  TORCH_CHECK(input.dim() == 4, "flow_warp: input must be 4-D [B, C, H, W], got shape ", input.sizes());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), "flow_warp: input must be floating point, got ",
              input.dtype());
  TORCH_CHECK(flow.dim() == 4 && flow.size(1) == 2,
              "flow_warp: flow must be [B, 2, H, W] (the op's layout), got shape ", flow.sizes());
  TORCH_CHECK(flow.size(0) == input.size(0) && flow.size(2) == input.size(2) && flow.size(3) == input.size(3),
              "flow_warp: flow must have the input's batch and spatial size ", input.size(0), "x", input.size(2),
              "x", input.size(3), ", got shape ", flow.sizes());
  TORCH_CHECK(flow.dtype() == input.dtype(), "flow_warp: flow must have the input's dtype ", input.dtype(),
              ", got ", flow.dtype());
  TORCH_CHECK(flow.device() == input.device(), "flow_warp: flow must be on the input's device ", input.device(),
              ", got ", flow.device());
}

void check_backward_inputs(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& flow) {
  check_inputs(input, flow);
  TORCH_CHECK(grad_output.sizes() == input.sizes() && grad_output.dtype() == input.dtype(),
              "flow_warp backward: grad_output must match the input's shape and dtype, got ", grad_output.sizes(),
              " ", grad_output.dtype());
  TORCH_CHECK(grad_output.device() == input.device(), "flow_warp backward: grad_output must be on the input's "
              "device");
}

ForwardArgs prepare_forward(const at::Tensor& input, const at::Tensor& flow, c10::string_view padding_mode,
                            bool align_corners, c10::string_view units, bool return_mask) {
  check_inputs(input, flow);
  const Options o = parse_options(padding_mode, align_corners, units);
  return {o, at::empty_like(input, at::MemoryFormat::Preserve),
          return_mask ? at::empty({input.size(0), 1, input.size(2), input.size(3)}, input.options())
                      : at::empty({0}, input.options())};
}

BackwardArgs prepare_backward(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& flow,
                              c10::string_view padding_mode, bool align_corners, c10::string_view units,
                              bool need_input, bool need_flow) {
  check_backward_inputs(grad_output, input, flow);
  const Options o = parse_options(padding_mode, align_corners, units);
  return {o, need_input ? at::empty_like(input, at::MemoryFormat::Preserve) : at::empty({0}, input.options()),
          need_flow ? at::empty_like(flow, at::MemoryFormat::Preserve) : at::empty({0}, flow.options())};
}

}  // namespace flow_warp
}  // namespace fastops
