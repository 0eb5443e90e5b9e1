"""The student stage: build a student, SFT it on kept traces with TRL."""
