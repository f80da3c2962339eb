"""The model card's quick-start snippet: loading the result with transformers (and peft for an adapter) and
scoring labels for an image. It must run as written (`tests/hub/test_card_snippet.py` runs it, warnings included).
"""

from __future__ import annotations

import os

#: The one line that makes an image RGB the way clip_trl (and transformers' image processors) do: transparency
#: composited onto white. transformers' `pipeline` loader converts to RGB first, which turns transparent pixels
#: black, so a pipeline scores transparent images differently; see docs/evaluation.md.
COMPOSITE_ON_WHITE = 'image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA")).convert("RGB")'


def _is_hub_id(name: str | None) -> bool:
    """A string that names a Hub repository rather than a local folder (only those go in `base_model`)."""
    if not name or os.path.isabs(name) or os.path.exists(name) or name.startswith((".", "~")):
        return False
    return name.count("/") <= 1


def quick_start(repo: str, base_name: str | None, class_name: str, adapter: bool, labels: list[str]) -> str:
    """The card's usage snippet: it must run as written once `repo` (and an adapter's base) can be reached, and
    `photo.jpg` (a placeholder, said so in the snippet) is an image."""
    import transformers

    from clip_trl.models.families import adapter_for_class

    # Custom lookalike classes are not importable from transformers; AutoModel finds them by config.
    import_name = class_name if hasattr(transformers, class_name) else "AutoModel"
    family = adapter_for_class(class_name)
    # SigLIP was trained on texts padded to the full length, and scores each label on its own (sigmoid).
    max_length, sigmoid = family.text_padding == "max_length", family.logit_bias
    lines = [
        "import torch",
        "from PIL import Image",
        f"from transformers import AutoProcessor, {import_name}",
    ]
    if adapter:
        if not base_name:
            base_line = (
                f'base = {import_name}.from_pretrained("<base model id or folder>")'
                "  # the adapter config names none"
            )
        elif _is_hub_id(base_name):
            base_line = f'base = {import_name}.from_pretrained("{base_name}")'
        else:
            base_line = (
                f'base = {import_name}.from_pretrained("{base_name}")'
                "  # a local folder where this was trained: use its Hub id elsewhere"
            )
        lines += [
            "from peft import PeftModel",
            "",
            base_line,
            f'model = PeftModel.from_pretrained(base, "{repo}").eval()',
            "model = model.merge_and_unload()  # optional: plain transformers model, no adapter overhead",
            # An adapter repository has no config.json, which AutoProcessor looks for (offline, it fails on
            # that): the processor comes from the base model, whose preprocessing the adapter was trained with.
            f'processor = AutoProcessor.from_pretrained("{base_name or "<base model id or folder>"}")',
        ]
    else:
        lines += [
            "",
            f'model = {import_name}.from_pretrained("{repo}").eval()',
            f'processor = AutoProcessor.from_pretrained("{repo}")',
        ]
    lines += [
        "",
        f"labels = {labels!r}",
        'image = Image.open("photo.jpg")  # a placeholder: the path of your own image',
        "# Transparency onto white, as in training (a pipeline() would turn transparent pixels black instead):",
        COMPOSITE_ON_WHITE,
        # `truncation=True`: texts over the model's token limit are cut (as in training), and transformers does
        # not warn that a `max_length` the processor carries is ignored.
        'inputs = processor(text=labels, images=image, return_tensors="pt", '
        + ('padding="max_length", truncation=True)' if max_length else "padding=True, truncation=True)"),
        "with torch.no_grad():",
    ]
    if family.use_forward:
        lines.append("    logits = model(**inputs).logits_per_image[0]")
    else:
        # FLAVA's forward runs its multimodal encoder and returns no `logits_per_image`: the towers' token 0,
        # projected, is its contrastive embedding (what clip_trl trains).
        pool = ".pooler_output[:, 0]" if family.pool_first_token else ".pooler_output"
        lines += [
            f'    image = model.get_image_features(pixel_values=inputs["pixel_values"]){pool}',
            f'    text = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]){pool}',
            "image, text = (torch.nn.functional.normalize(x, dim=-1) for x in (image, text))",
            "logits = model.logit_scale.exp() * (image @ text.T)[0]",
        ]
    lines += [
        "probs = torch.sigmoid(logits)" if sigmoid else "probs = logits.softmax(dim=-1)",
        "print({label: round(p, 3) for label, p in zip(labels, probs.tolist())})",
    ]
    return "\n".join(lines)
