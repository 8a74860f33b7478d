"""Base classes of every app's API: strict input, the one error shape as a serializer."""

from __future__ import annotations

from rest_framework import serializers


class StrictInputSerializer(serializers.Serializer):
    """Input serializers refuse fields they do not know, so a typo is an error that names
    the field instead of a silently ignored setting. `aliases` map the original's names."""

    aliases: dict[str, str] = {}

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError({"non_field_errors": ["Expected a JSON object."]})
        data = dict(data)
        sent_as = {}
        for old, new in self.aliases.items():
            if old in data and new not in data:
                data[new] = data.pop(old)
                sent_as[new] = old
        unknown = sorted(set(data) - set(self.fields) - set(self.aliases))
        if unknown:
            raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        try:
            return super().to_internal_value(data)
        except serializers.ValidationError as exc:
            # Name the field as the caller spelled it.
            if sent_as and isinstance(exc.detail, dict):
                exc.detail = {sent_as.get(k, k): v for k, v in exc.detail.items()}
            raise


class ErrorSerializer(serializers.Serializer):
    class Inner(serializers.Serializer):
        code = serializers.CharField()
        message = serializers.CharField()
        fields = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))

    error = Inner()
