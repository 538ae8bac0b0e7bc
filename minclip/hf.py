"""Hugging Face ``CLIPModel`` directories, read and written without PyTorch.

A directory saved by ``CLIPModel.save_pretrained`` holds::

    config.json         every size: text_config, vision_config, projection_dim
    model.safetensors   the weights, under Hugging Face's names

The two towers are the same network as OpenAI's ViT CLIP, stored differently:

    Hugging Face                                     OpenAI / minclip
    vision_model.embeddings.patch_embedding.weight   visual.conv1.weight
    vision_model.encoder.layers.3.self_attn.q_proj   \\ stacked, in q, k, v order:
    ...                               .k_proj, .v_proj / visual.transformer.resblocks.3.attn.in_proj_*
    visual_projection.weight  (E, W)                 visual.proj  (W, E): a Linear stores (out, in)
    text_model.final_layer_norm                      ln_final

Every size comes from ``config.json`` (head counts are not width // 64 in
general), and so do the activation and the LayerNorm ε. Hugging Face pools
the text at the end-of-text token: with ``eos_token_id == 2`` (the setting of
OpenAI's converted checkpoints) at the largest token id, as OpenAI and minclip
do; otherwise at the first ``eos_token_id``, which is the same position when
the end token has the largest id (OpenAI's tokenizer, and minclip's).

A model trained with its own tokenizer keeps it next to the weights, in
``minclip_tokenizer.txt`` (``from_pretrained`` ignores the extra file).
"""
import json
import os

from minclip.backend import array_module
from minclip.model.config import CLIPConfig
from minclip.safetensors_io import WeightsFileError, read_tensors, write_tensors

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "minclip_tokenizer.txt"

# transformers' defaults, for keys that an older config.json leaves out (it saved only what differed)
_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                      num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
                      layer_norm_eps=1e-5)
_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                        num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5)
_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}     # Hugging Face's name -> minclip's


# ------------------------------------------------------------- key names

def _renamed_keys(vision_layers, text_layers):
    """(Hugging Face name, OpenAI name) of every array that moves across unchanged."""
    pairs = [("vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight"),
             ("vision_model.embeddings.class_embedding", "visual.class_embedding"),
             ("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding"),
             ("text_model.embeddings.token_embedding.weight", "token_embedding.weight"),
             ("text_model.embeddings.position_embedding.weight", "positional_embedding"),
             ("logit_scale", "logit_scale")]
    norms = [("vision_model.pre_layrnorm", "visual.ln_pre"), ("vision_model.post_layernorm", "visual.ln_post"),
             ("text_model.final_layer_norm", "ln_final")]
    for tower, ours, layers in (("vision_model", "visual.transformer", vision_layers),
                                ("text_model", "transformer", text_layers)):
        for i in range(layers):
            norms += [(f"{tower}.encoder.layers.{i}.{theirs}", f"{ours}.resblocks.{i}.{mine}")
                      for theirs, mine in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                                           ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                                           ("mlp.fc2", "mlp.c_proj"))]
    pairs += [(f"{theirs}.{p}", f"{mine}.{p}") for theirs, mine in norms for p in ("weight", "bias")]
    return pairs


_TRANSPOSED = (("visual_projection.weight", "visual.proj"), ("text_projection.weight", "text_projection"))


def _attention_layers(vision_layers, text_layers):
    """(Hugging Face prefix, OpenAI prefix) of every attention layer, whose q, k, v stack into one."""
    return ([(f"vision_model.encoder.layers.{i}.self_attn.", f"visual.transformer.resblocks.{i}.attn.")
             for i in range(vision_layers)] +
            [(f"text_model.encoder.layers.{i}.self_attn.", f"transformer.resblocks.{i}.attn.")
             for i in range(text_layers)])


def _count_layers(keys, tower):
    prefix = f"{tower}.encoder.layers."
    return len({k[len(prefix):].split(".")[0] for k in keys if k.startswith(prefix)})


def hf_to_openai(hf):
    """Hugging Face ``CLIPModel`` names -> OpenAI's, for any dict of arrays keyed by HF names
    (weights, or their gradients). A key that has no OpenAI counterpart is an error."""
    hf = {k: v for k, v in hf.items() if not k.endswith("position_ids")}     # a buffer in older files
    layers = _count_layers(hf, "vision_model"), _count_layers(hf, "text_model")
    out, used = {}, set()

    def take(key):
        if key not in hf:
            raise KeyError(f"no {key!r} among the Hugging Face weights")
        used.add(key)
        return hf[key]

    for theirs, ours in _renamed_keys(*layers):
        out[ours] = take(theirs)
    for theirs, ours in _TRANSPOSED:
        out[ours] = take(theirs).T                                            # (out, in) -> (in, out)
    for theirs, ours in _attention_layers(*layers):
        for p in ("weight", "bias"):
            q, k, v = (take(f"{theirs}{n}_proj.{p}") for n in "qkv")
            out[f"{ours}in_proj_{p}"] = array_module(q).concatenate([q, k, v])
    left = sorted(set(hf) - used)
    if left:
        raise KeyError(f"{left[0]!r} is not part of a CLIPModel that minclip can hold "
                       f"({len(left)} such keys)")
    return out


def openai_to_hf(state_dict, vision_layers, text_layers):
    """The inverse of ``hf_to_openai``: OpenAI-named arrays -> Hugging Face names."""
    out = {theirs: state_dict[ours] for theirs, ours in _renamed_keys(vision_layers, text_layers)}
    out.update((theirs, state_dict[ours].T) for theirs, ours in _TRANSPOSED)
    for theirs, ours in _attention_layers(vision_layers, text_layers):
        for p in ("weight", "bias"):
            stacked = state_dict[f"{ours}in_proj_{p}"]
            for name, part in zip("qkv", array_module(stacked).split(stacked, 3)):
                out[f"{theirs}{name}_proj.{p}"] = part
    return out


# --------------------------------------------------------------- configs

def config_from_hf(hf_config, path):
    """The ``CLIPConfig`` that a Hugging Face ``config.json`` (as a dict) describes."""
    text = {**_TEXT_DEFAULTS, **(hf_config.get("text_config") or {})}
    vision = {**_VISION_DEFAULTS, **(hf_config.get("vision_config") or {})}
    for name, tower in (("text", text), ("vision", vision)):
        if tower["intermediate_size"] != 4 * tower["hidden_size"]:
            raise WeightsFileError(f"{path}: the {name} MLP is {tower['intermediate_size']} wide, minclip's "
                                   f"is 4 × hidden_size = {4 * tower['hidden_size']}")
        if tower["hidden_act"] not in _ACTIVATIONS:
            raise WeightsFileError(f"{path}: {name} hidden_act {tower['hidden_act']!r} is not one minclip "
                                   f"has; expected one of {sorted(_ACTIVATIONS)}")
    for field in ("hidden_act", "layer_norm_eps"):
        if text[field] != vision[field]:
            raise WeightsFileError(f"{path}: the towers differ in {field} ({text[field]!r} for text, "
                                   f"{vision[field]!r} for vision); minclip uses one for both")
    if vision["num_channels"] != 3:
        raise WeightsFileError(f"{path}: expected RGB images (num_channels 3), got {vision['num_channels']}")
    tokenizer = "trained" if os.path.isfile(os.path.join(path, TOKENIZER_FILE)) else "openai"
    try:
        return CLIPConfig(embed_dim=hf_config.get("projection_dim", 512),
                          image_resolution=vision["image_size"], vision_layers=vision["num_hidden_layers"],
                          vision_width=vision["hidden_size"], vision_patch_size=vision["patch_size"],
                          vision_heads=vision["num_attention_heads"],
                          context_length=text["max_position_embeddings"], vocab_size=text["vocab_size"],
                          transformer_width=text["hidden_size"], transformer_heads=text["num_attention_heads"],
                          transformer_layers=text["num_hidden_layers"],
                          activation=_ACTIVATIONS[text["hidden_act"]], layer_norm_eps=text["layer_norm_eps"],
                          tokenizer=tokenizer)
    except ValueError as error:
        raise WeightsFileError(f"{path}: {error}") from None


def hf_config_from(config):
    """The ``config.json`` (a dict) of ``config``, which must be a ViT CLIP trained with softmax."""
    if not config.is_vit or config.loss != "clip":
        kind = "a ResNet image tower" if not config.is_vit else "a SigLIP logit_bias"
        raise ValueError(f"Hugging Face's CLIPModel has a ViT and no logit bias; this model has {kind}")
    act, eps = config.activation, config.layer_norm_eps
    text = dict(vocab_size=config.vocab_size, hidden_size=config.transformer_width,
                intermediate_size=4 * config.transformer_width, num_hidden_layers=config.transformer_layers,
                num_attention_heads=config.transformer_heads, max_position_embeddings=config.context_length,
                hidden_act=act, layer_norm_eps=eps, projection_dim=config.embed_dim,
                # 2 selects pooling at the largest token id (OpenAI's and minclip's rule); see the docstring
                bos_token_id=1, eos_token_id=2, pad_token_id=0, model_type="clip_text_model")
    vision = dict(hidden_size=config.vision_width, intermediate_size=4 * config.vision_width,
                  num_hidden_layers=config.vision_layers, num_attention_heads=config.vision_heads,
                  num_channels=3, image_size=config.image_resolution, patch_size=config.vision_patch_size,
                  hidden_act=act, layer_norm_eps=eps, projection_dim=config.embed_dim,
                  model_type="clip_vision_model")
    return dict(architectures=["CLIPModel"], model_type="clip", projection_dim=config.embed_dim,
                logit_scale_init_value=2.6592, text_config=text, vision_config=vision)


# ------------------------------------------------------ reading, writing

def is_hf_directory(path):
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG_FILE))


def read_hf(path):
    """(config, weights under OpenAI's names) of a Hugging Face ``CLIPModel`` directory."""
    path = os.fspath(path)
    weights_path = os.path.join(path, WEIGHTS_FILE)
    if not os.path.isfile(weights_path):
        if os.path.isfile(os.path.join(path, "pytorch_model.bin")):
            raise WeightsFileError(f"{path} holds pytorch_model.bin but no {WEIGHTS_FILE}: minclip reads "
                                   f"only safetensors (re-save it with CLIPModel.save_pretrained)")
        raise FileNotFoundError(f"{path} has {CONFIG_FILE} but no {WEIGHTS_FILE}")
    try:
        with open(os.path.join(path, CONFIG_FILE)) as f:
            hf_config = json.load(f)
    except json.JSONDecodeError as error:
        raise WeightsFileError(f"{os.path.join(path, CONFIG_FILE)} is not JSON: {error}") from None
    if hf_config.get("model_type", "clip") != "clip":
        raise WeightsFileError(f"{path}: expected a CLIPModel (model_type 'clip'), got {hf_config['model_type']!r}")
    config = config_from_hf(hf_config, path)
    tensors, _ = read_tensors(weights_path)
    try:
        weights = hf_to_openai(tensors)
    except KeyError as error:
        raise WeightsFileError(f"{weights_path}: {error.args[0]}") from None
    return config, weights


def save_hf(model, directory, tokenizer=None):
    """Write ``model`` as a Hugging Face ``CLIPModel`` directory (``from_pretrained`` loads it).

    The weights (and the tokenizer of a model trained with its own) are
    written first, ``config.json`` last, each atomically, so an interrupted
    export never looks like a complete directory.
    """
    config = model.config
    hf_config = hf_config_from(config)
    if config.tokenizer == "trained" and tokenizer is None:
        raise ValueError("this model was trained with its own tokenizer, and none was given to save with it")
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    weights = openai_to_hf({k: v.astype("float32") for k, v in model.state_dict().items()},
                           config.vision_layers, config.transformer_layers)
    write_tensors(os.path.join(directory, WEIGHTS_FILE), weights, {"format": "pt"})
    if config.tokenizer == "trained":
        temporary = os.path.join(directory, f"{TOKENIZER_FILE}.tmp{os.getpid()}")
        tokenizer.save(temporary)
        os.replace(temporary, os.path.join(directory, TOKENIZER_FILE))
    _write_text(os.path.join(directory, CONFIG_FILE), json.dumps(hf_config, indent=2) + "\n")


def _write_text(path, text):
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w") as f:
        f.write(text)
    os.replace(temporary, path)
