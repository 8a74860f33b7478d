from django.db import models


class ApprovalStatus(models.TextChoices):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    # Nobody decided in time: not the same as a "no".
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class ApprovalKind(models.TextChoices):
    QUESTION = "question"
    ACTION = "action"


class Urgency(models.TextChoices):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
