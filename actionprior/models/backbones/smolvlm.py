"""SmolVLM / Idefics3 adapter: one un-split tile per image, positions counted over real tokens."""

from __future__ import annotations

from actionprior.models.backbones.common import FamilyAdapter, frames_per_sample


class SmolVLMAdapter(FamilyAdapter):
    """SmolVLM / Idefics3 without image splitting: ``<fake><global-img><image> x N <fake>`` per image."""

    def preprocess(self, images, camera_mask):
        images = frames_per_sample(images, camera_mask)
        if any(len(sample) == 0 for sample in images):
            raise ValueError("SmolVLM backbone: every sample needs at least one present camera (camera_mask)")
        out = self.image_processor(images=images, return_tensors="pt")
        tok = self.tokenizer
        vis = self.config.vision_config
        seq_len = (vis.image_size // vis.patch_size) ** 2 // (self.config.scale_factor**2)
        fake = tok.convert_tokens_to_ids("<fake_token_around_image>")
        glob = tok.convert_tokens_to_ids("<global-img>")
        block = [fake, glob] + [self.config.image_token_id] * seq_len + [fake]
        blocks = [[list(block) for _ in sample] for sample in images]
        return {
            "pixel_values": out["pixel_values"],
            "pixel_attention_mask": out["pixel_attention_mask"],
        }, blocks

    def extra_inputs(self, inputs):
        # Left padding: positions count real tokens only, so the same prompt gets the same positions.
        return {"position_ids": (inputs["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)}
