// distill_check MODEL SPLIT [THREADS] [QENGINE]
//
// MODEL   a distillserve student: model.pt (TorchScript) or model.pt2 (AOTInductor package)
// SPLIT   the test split as written by `distillserve cpp-check`: torch.save((images, labels))
//         with images an N x C x H x W float tensor (preprocessed) and labels an N int64 tensor
// THREADS intra-op threads (default 1); QENGINE the quantized engine of an eager int8
//         TorchScript model (default x86)
//
// Prints one JSON object: format, samples, accuracy, top-1 label per image, and the median
// latency of batch 1 and batch 8 in milliseconds.
#include <ATen/Parallel.h>
#include <torch/script.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <functional>
#include <iostream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

namespace {

using Forward = std::function<at::Tensor(const at::Tensor&)>;

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::vector<char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

double median_ms(const Forward& forward, const at::Tensor& input, int repeats) {
  for (int i = 0; i < 10; ++i) forward(input);
  std::vector<double> samples;
  for (int i = 0; i < repeats; ++i) {
    auto start = std::chrono::steady_clock::now();
    forward(input);
    auto stop = std::chrono::steady_clock::now();
    samples.push_back(std::chrono::duration<double, std::milli>(stop - start).count());
  }
  std::nth_element(samples.begin(), samples.begin() + samples.size() / 2, samples.end());
  return samples[samples.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: distill_check MODEL SPLIT [THREADS] [QENGINE]\n";
    return 2;
  }
  const std::string model_path = argv[1];
  const int threads = argc > 3 ? std::stoi(argv[3]) : 1;
  const std::string engine = argc > 4 ? argv[4] : "x86";
  try {
    at::set_num_threads(threads);
    auto split = torch::jit::pickle_load(read_file(argv[2])).toTuple();
    const at::Tensor images = split->elements()[0].toTensor().contiguous();
    const at::Tensor labels = split->elements()[1].toTensor();
    c10::InferenceMode guard;

    std::string format;
    Forward forward;
    std::shared_ptr<torch::jit::Module> script;
    std::shared_ptr<torch::inductor::AOTIModelPackageLoader> package;
    if (ends_with(model_path, ".pt2")) {
      format = "pt2";
      package = std::make_shared<torch::inductor::AOTIModelPackageLoader>(model_path);
      forward = [package](const at::Tensor& x) { return package->run({x})[0]; };
    } else if (ends_with(model_path, ".pt")) {
      format = "torchscript";
      if (engine == "x86") at::globalContext().setQEngine(at::QEngine::X86);
      else if (engine == "fbgemm") at::globalContext().setQEngine(at::QEngine::FBGEMM);
      else if (engine == "qnnpack") at::globalContext().setQEngine(at::QEngine::QNNPACK);
      else if (engine == "onednn") at::globalContext().setQEngine(at::QEngine::ONEDNN);
      script = std::make_shared<torch::jit::Module>(torch::jit::load(model_path));
      script->eval();
      forward = [script](const at::Tensor& x) { return script->forward({x}).toTensor(); };
    } else {
      std::cerr << "distill_check: " << model_path << " is neither .pt nor .pt2\n";
      return 2;
    }

    std::vector<int64_t> predicted;
    const int64_t n = images.size(0);
    for (int64_t start = 0; start < n; start += 64) {
      const at::Tensor logits = forward(images.slice(0, start, std::min(n, start + 64)));
      const at::Tensor top1 = logits.argmax(1).to(at::kLong).contiguous();
      predicted.insert(predicted.end(), top1.data_ptr<int64_t>(),
                       top1.data_ptr<int64_t>() + top1.numel());
    }
    int64_t correct = 0;
    const at::Tensor truth = labels.to(at::kLong).contiguous();
    for (int64_t i = 0; i < n; ++i) correct += predicted[i] == truth.data_ptr<int64_t>()[i];

    const double batch1 = median_ms(forward, images.slice(0, 0, 1), 100);
    const double batch8 = median_ms(forward, images.slice(0, 0, std::min<int64_t>(8, n)), 30);
    std::cout << "{\"format\": \"" << format << "\", \"samples\": " << n
              << ", \"accuracy\": " << static_cast<double>(correct) / std::max<int64_t>(1, n)
              << ", \"latency_ms_batch1\": " << batch1 << ", \"latency_ms_batch8\": " << batch8
              << ", \"threads\": " << threads << ", \"predictions\": [";
    for (int64_t i = 0; i < n; ++i) std::cout << (i ? ", " : "") << predicted[i];
    std::cout << "]}" << std::endl;
  } catch (const std::exception& err) {
    std::string what = err.what();
    std::cerr << "distill_check: " << what.substr(0, what.find('\n')) << "\n";
    return 1;
  }
  return 0;
}
