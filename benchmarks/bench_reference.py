"""minclip against what a user would pick instead: Hugging Face's CLIPModel and open_clip's ResNet.

    python benchmarks/bench_reference.py [--reps 3] [--no-memory] [--profile] [CASE ...]

bench_train_step.py and bench_inference.py compare minclip with a PyTorch
transcription of OpenAI's code (``torch_clip.py``). Someone who wants CLIP on
a CPU would rather pick a maintained library, so these cases measure against
those, on the same weights:

* ``vit-256 step``: one training step (forward, CLIP loss, backward, clip the
  gradient norm, AdamW, clamp the logit scale) of a ViT CLIP, both towers 256
  wide and 4 deep, 32 px images in 4 px patches, text context 32, batch 128,
  against ``transformers.CLIPModel`` (fused ``sdpa`` attention where the
  installed transformers has it, QuickGELU; its own ``return_loss=True``).
  The weights go across through ``minclip.hf`` (the converter behind
  ``save_hf``), the AdamW groups too (open_clip's weight-decay rule, decided
  on minclip's names).
* ``vit-b-32 image``: ViT-B/32 ``encode_image`` on 8 images of 224 px against
  ``CLIPModel.get_image_features``.
* ``rn tower step``: a training step of the ResNet image tower alone
  (layers 1,1,1,1, width 32, 64 px images, batch 64; loss: the CLIP loss of
  its features against fixed random text features) against open_clip's own
  ``ModifiedResNet`` class (see ``open_clip_modified_resnet``).
* ``rn50 image``: RN50 ``encode_image`` on 8 images of 224 px against open_clip's
  ``ModifiedResNet`` in evaluation mode.

Each case checks that both sides compute the same thing (outputs, or loss
and every gradient, to bench_train_step.py's tolerances) before timing them
alternately (``common.compare``); peak memory in fresh processes
(``common.memory_pair``). Results: benchmarks/results/reference.json.
"""
import importlib
import importlib.util
import os
import sys
import types

import common  # first: it fixes the thread counts before NumPy loads
import numpy as np
import torch
import transformers
from bench_train_step import (GRAD_FLOOR, LR, BETAS, EPS, MAX_NORM, WEIGHT_DECAY, make_batch,
                              minclip_trainer, torch_step, verified_first_step)
from torch.nn import functional as TF
from torch_clip import clip_loss as torch_clip_loss

from minclip import backend, hf, no_grad
from minclip import functional as F
from minclip.loss import clip_loss
from minclip.model import CLIP, CLIPConfig
from minclip.optim import AdamW, clip_grad_norm_, param_groups_for_weight_decay
from minclip.tensor import Tensor

VIT_256 = dict(vision_width=256, transformer_width=256, vision_patch_size=4, context_length=32)
RN_TOWER = dict(image_resolution=64)                  # tiny-rn: layers 1,1,1,1, width 32
IMAGES = 8
CASES = {"vit-256 step": dict(preset="tiny-vit", overrides=VIT_256, batch=128, kind="step", reference="clipmodel"),
         "vit-b-32 image": dict(preset="ViT-B-32", overrides={}, batch=IMAGES, kind="image", reference="clipmodel"),
         "rn tower step": dict(preset="tiny-rn", overrides=RN_TOWER, batch=64, kind="step", reference="open_clip"),
         "rn50 image": dict(preset="RN50", overrides={}, batch=IMAGES, kind="image", reference="open_clip")}


# ------------------------------------------------------- the references

def attention_implementation():
    """ "sdpa" (PyTorch's fused scaled_dot_product_attention) when CLIPModel supports it, else "eager"."""
    return "sdpa" if getattr(transformers.CLIPModel, "_supports_sdpa", False) else "eager"


def clipmodel_from_minclip(model):
    """A ``transformers.CLIPModel`` holding a copy of ``model``'s weights (converted by ``minclip.hf``)."""
    config = model.config
    reference = transformers.CLIPModel._from_config(transformers.CLIPConfig.from_dict(hf.hf_config_from(config)),
                                                    attn_implementation=attention_implementation())
    weights = hf.openai_to_hf({k: np.asarray(v) for k, v in model.state_dict().items()},
                              config.vision_layers, config.transformer_layers)
    missing, unexpected = reference.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v))
                                                     for k, v in weights.items()}, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"CLIPModel's parameters and minclip's converted weights differ: "
                           f"missing {missing}, unexpected {unexpected}")
    return reference.train(model.training)


def clipmodel_gradients(reference):
    """CLIPModel's gradients under minclip's (OpenAI's) names: q, k, v stacked, projections transposed."""
    return hf.hf_to_openai({name: p.grad.numpy() for name, p in reference.named_parameters()})


def clipmodel_param_groups(model, reference):
    """minclip's two AdamW groups (no decay, decay) over CLIPModel's parameters.

    Hugging Face's names would put the patch embedding among the "embedding"s
    that do not decay, so the groups are decided on minclip's names and carried
    across by the weight converter: an array of flags per parameter, converted
    like the weight it stands for.
    """
    config = model.config
    no_decay = {id(p) for p in param_groups_for_weight_decay(model.named_parameters(), WEIGHT_DECAY)[0]["params"]}
    flags = hf.openai_to_hf({name: np.full(p.shape, id(p) not in no_decay) for name, p in model.named_parameters()},
                            config.vision_layers, config.transformer_layers)
    named = dict(reference.named_parameters())
    return [{"params": [named[n] for n, decays in flags.items() if decays.all() == decay], "weight_decay": wd}
            for decay, wd in ((False, 0.0), (True, WEIGHT_DECAY))]


def open_clip_modified_resnet():
    """open_clip's own ``ModifiedResNet`` class, from the installed open_clip.

    open_clip_torch is installed here without its dependencies, and torchvision
    is missing: ``import open_clip`` fails in open_clip/utils.py, which imports
    ``torchvision.ops.misc.FrozenBatchNorm2d`` for ``freeze_batch_norm_2d``
    (locking a tower for fine-tuning), which no benchmark calls. So the two
    files the class needs, utils.py and modified_resnet.py, are imported as a
    package of their own, with an empty stand-in for ``torchvision.ops.misc``
    present only while they load. The model code that runs is open_clip's,
    unchanged. With torchvision installed, open_clip is imported as usual.
    """
    if importlib.util.find_spec("torchvision") is not None:
        return importlib.import_module("open_clip.modified_resnet").ModifiedResNet
    package = types.ModuleType("open_clip_resnet")
    package.__path__ = [os.path.dirname(importlib.util.find_spec("open_clip").origin)]
    stand_ins = {name: types.ModuleType(name) for name in ("torchvision", "torchvision.ops", "torchvision.ops.misc")}
    stand_ins["torchvision.ops.misc"].FrozenBatchNorm2d = None
    sys.modules.update({"open_clip_resnet": package, **stand_ins})
    try:
        return importlib.import_module("open_clip_resnet.modified_resnet").ModifiedResNet
    finally:
        for name in stand_ins:
            del sys.modules[name]


def open_clip_from_minclip(model):
    """open_clip's ``ModifiedResNet`` holding a copy of ``model.visual``'s weights and batch-norm statistics."""
    config = model.config
    tower = open_clip_modified_resnet()(config.vision_layers, config.embed_dim, config.vision_heads,
                                        config.image_resolution, config.vision_width)
    prefix = "visual."
    tower.load_state_dict({k[len(prefix):]: torch.from_numpy(np.array(v))
                           for k, v in model.state_dict().items() if k.startswith(prefix)})
    return tower.train(model.visual.training)


# ------------------------------------------------------------ the steps

def tower_batch(config, batch, seed=0):
    """Images (B, 3, R, R) and fixed unit-length text features (B, E) for a tower-only step."""
    images, _ = make_batch(config, batch, seed)
    text = np.random.default_rng(seed + 1).standard_normal((batch, config.embed_dim), dtype=np.float32)
    return images, text / np.linalg.norm(text, axis=1, keepdims=True)


def minclip_tower_trainer(tower, images, text, logit_scale):
    """One training step of an image tower alone: CLIP loss against fixed text features, then
    as ``train_step`` (zero_grad, backward, clip, AdamW)."""
    optimizer = AdamW(param_groups_for_weight_decay(tower.named_parameters(), WEIGHT_DECAY),
                      lr=LR, betas=BETAS, eps=EPS)
    images, text, scale = Tensor(images), Tensor(text), Tensor(np.float32(logit_scale))

    def step():
        loss = clip_loss(F.normalize(tower(images), axis=-1), text, scale)
        optimizer.zero_grad()
        loss.backward()
        clip_grad_norm_(tower.parameters(), MAX_NORM)
        optimizer.step()
        return float(loss.item())
    return step


def torch_tower_trainer(tower, images, text, logit_scale):
    images, text = torch.from_numpy(images), torch.from_numpy(text)
    loss_of = lambda: torch_clip_loss(TF.normalize(tower(images), dim=-1), text, logit_scale)  # noqa: E731
    return torch_step(tower, loss_of, param_groups_for_weight_decay(tower.named_parameters(), WEIGHT_DECAY))


# ------------------------------------------------------------ the cases

def config_of(case, **overrides):
    spec = CASES[case]
    return CLIPConfig.preset(spec["preset"], **{**spec["overrides"], **overrides})


def build(case, library="both", batch=None, **overrides):
    """{"ours", "theirs": callables (None for a side not asked for), "verify": () -> check dict};
    ``batch`` and config ``overrides`` change the case's (bench_scaling.py's sweeps)."""
    spec, config = {**CASES[case], "batch": batch or CASES[case]["batch"]}, config_of(case, **overrides)
    backend.seed(0)
    model = CLIP(config)
    want_ours, want_theirs = library in ("both", "minclip"), library in ("both", "torch")
    if spec["kind"] == "image":
        return image_case(model.eval(), spec, want_ours, want_theirs)
    if spec["reference"] == "clipmodel":
        images, ids = make_batch(config, spec["batch"])
        reference = clipmodel_from_minclip(model) if want_theirs else None
        ours = minclip_trainer(model, images, ids) if want_ours else None
        theirs = None
        if want_theirs:
            pixels, input_ids = torch.from_numpy(images), torch.from_numpy(ids)
            theirs = torch_step(reference, lambda: reference(input_ids=input_ids, pixel_values=pixels,
                                                             return_loss=True).loss,
                                clipmodel_param_groups(model, reference), reference.logit_scale)
        return {"ours": ours, "theirs": theirs,
                "verify": lambda: verified_first_step(model, reference, ours, theirs, clipmodel_gradients)}
    images, text = tower_batch(config, spec["batch"])
    scale = float(np.exp(np.asarray(model.logit_scale.data)))
    reference = open_clip_from_minclip(model) if want_theirs else None
    ours = minclip_tower_trainer(model.visual, images, text, scale) if want_ours else None
    theirs = torch_tower_trainer(reference, images, text, scale) if want_theirs else None
    return {"ours": ours, "theirs": theirs,
            "verify": lambda: tower_check(config, images, text, scale, model.visual, reference, ours, theirs)}


def tower_check(config, images, text, scale, tower, reference, ours, theirs):
    """The tower step's check: the same function in float64, then the float32 first step.

    float64 (loss and every gradient to 1e-6) is where rounding cannot hide a
    mistake. The float32 first step's loss is checked to 1e-4 and its gradients
    to 1e-2 of each gradient's largest entry: one
    ReLU of the stem has an input within float32 rounding of zero (one of
    the 10⁶ outputs of bn1, for these images), which minclip's float32 rounds
    to the other side than PyTorch's; that one position's gradient then
    differs, by 4.7e-3 of conv1.weight's largest entry, while every other
    gradient agrees to 2e-4. (Batch norm's forward, folded into
    x · s + (b - mean · s), used to cancel when |mean| ≫ std and put layer3's
    gradients 5.3e-2 away; it now centres first.)
    """
    backend.seed(0)                                               # the weights of ``tower``, as build() made them
    model64 = CLIP(config)
    reference64 = open_clip_from_minclip(model64).double()
    tower64 = model64.to(dtype="float64").visual
    ours64 = clip_loss(F.normalize(tower64(Tensor(images.astype(np.float64))), axis=-1),
                       Tensor(text.astype(np.float64)), Tensor(np.float64(scale)))
    theirs64 = torch_clip_loss(TF.normalize(reference64(torch.from_numpy(images).double()), dim=-1),
                               torch.from_numpy(text).double(), scale)
    ours64.backward()
    theirs64.backward()
    expected, floor = gradients_and_floor(reference64)
    check = {"float64_loss": common.check_close("float64 loss", ours64.item(), theirs64.item(), 1e-6),
             "float64_gradients": max(common.check_close(f"float64 gradient of {name}", p.grad, expected[name],
                                                         1e-6, floor) for name, p in tower64.named_parameters()),
             "loss": common.check_close("loss", ours(), theirs())}
    expected, floor = gradients_and_floor(reference)
    check["float32_gradients"] = max(common.check_close(f"float32 gradient of {name}", p.grad, expected[name],
                                                        1e-2, floor)
                                     for name, p in tower.named_parameters())
    return {k: float(f"{v:.2e}") for k, v in check.items()}


def gradients_and_floor(reference):
    """The reference's gradients by name, and bench_train_step's floor for the about-zero ones."""
    gradients = {name: p.grad.numpy() for name, p in reference.named_parameters()}
    return gradients, GRAD_FLOOR * max(np.abs(g).max() for g in gradients.values())


def image_case(model, spec, want_ours, want_theirs):
    """encode_image on IMAGES random images, in evaluation mode, without gradients."""
    R = model.config.image_resolution
    images = np.random.default_rng(0).standard_normal((spec["batch"], 3, R, R), dtype=np.float32)
    if want_theirs:
        reference = (clipmodel_from_minclip(model) if spec["reference"] == "clipmodel"
                     else open_clip_from_minclip(model)).eval()
    pixels = torch.from_numpy(images)

    def ours():
        with no_grad():
            return model.encode_image(images).numpy()

    def theirs():
        with torch.no_grad():
            if spec["reference"] == "clipmodel":
                return reference.get_image_features(pixel_values=pixels).pooler_output.numpy()
            return reference(pixels).numpy()
    return {"ours": ours if want_ours else None, "theirs": theirs if want_theirs else None,
            "verify": lambda: {"output": float(f"{common.check_close('image features', ours(), theirs()):.2e}")}}


def run(case, reps, memory=True, with_profile=False, batch=None, **overrides):
    """Check, time (and measure, profile) one case; returns its result dict."""
    spec, built = CASES[case], build(case, batch=batch, **overrides)
    result = {"case": case, "reference": spec["reference"], "batch": batch or spec["batch"],
              "config": config_of(case, **overrides).to_dict(),
              "attention": attention_implementation() if spec["reference"] == "clipmodel" else None,
              "check": built["verify"]()}
    return common.timed_case(result, built["ours"], built["theirs"], reps, __file__, memory, with_profile)


def main():
    child = common.memory_child_args()
    if child:
        case, library = child
        built = build(case, library)
        return common.measure_step_memory(built["ours" if library == "minclip" else "theirs"], library)
    reps = common.parse_reps(3)
    memory = "--no-memory" not in sys.argv
    cases = [a for a in sys.argv[1:] if a in CASES] or list(CASES)
    print(f"minclip against CLIPModel ({attention_implementation()} attention) and open_clip, float32, "
          f"median of {reps}; {common.threads_text()}")
    print(common.table_header(memory=memory) + f"{'fastest':>9}")
    results = []
    for case in cases:
        result = run(case, reps, memory, "--profile" in sys.argv)
        results.append(result)
        print(common.format_row(f"{case} vs {result['reference']}", result) + f"{result['fastest_ratio']:>9.2f}",
              flush=True)
        if "profile" in result:
            print(common.format_profile(result["profile"]))
    common.write_results("reference", {"transformers": transformers.__version__, "results": results})


if __name__ == "__main__":
    main()
