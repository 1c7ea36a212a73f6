"""The Hub model card: a Jinja2 template and its renderer (numbers come from results.json)."""

from model_card.render import USER_SNIPPET, CardValidationError, card_data, eval_results, render_card, validate_card

__all__ = ["USER_SNIPPET", "CardValidationError", "card_data", "eval_results", "render_card", "validate_card"]
