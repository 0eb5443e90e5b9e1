"""The closing stage: quantize, write a Hub-ready folder with a model card, push."""
