// Schemas of bias_act and its gradient; the kernels register per device in bias_act_{cpu,cuda}.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(styledeck, m) {
    // y = clamp(act(x + b) * gain); clamp < 0 means none. `act` names an activation of
    // cuda_ops/reference/bias_act.py; the Python wrapper resolves alpha/gain defaults.
    m.def("bias_act(Tensor x, Tensor? b, int dim, str act, float alpha, float gain, float clamp) -> Tensor");
    // dy * d^order y / dz^order at z = x + b (order 1 or 2): the backward of bias_act, and of itself.
    m.def("bias_act_grad(Tensor dy, Tensor x, Tensor? b, int dim, str act, float alpha, float gain, "
          "float clamp, int order) -> Tensor");
}
