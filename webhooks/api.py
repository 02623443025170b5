"""The webhook secret's API: its owner reads it, and rotates it."""

from drf_spectacular.utils import extend_schema
from rest_framework import permissions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from webhooks import services
from webhooks.signing import DELIVERY_HEADER, SIGNATURE_HEADER


class WebhookSecretSerializer(serializers.Serializer):
    secret = serializers.CharField(
        help_text=f"the HMAC-SHA256 key of your webhooks' {SIGNATURE_HEADER} header"
    )
    created_at = serializers.DateTimeField()
    rotated_at = serializers.DateTimeField(allow_null=True)
    signature_header = serializers.CharField()
    delivery_header = serializers.CharField()
    verification = serializers.CharField(help_text="how a receiver checks a webhook")


VERIFICATION = (
    f"{SIGNATURE_HEADER}: t=<unix time>,v1=<hex>. Compute HMAC-SHA256 under this secret "
    'of "<t>.<raw body>" and compare it with v1 in constant time; refuse a t more than a '
    f"few minutes old. {DELIVERY_HEADER} is the same on every retry of one delivery: "
    "drop repeats. docs/webhooks.md has a receiver."
)


def _answer(secret) -> Response:
    # A secret: no cache on the way may keep a copy.
    return Response(
        headers={"Cache-Control": "no-store"},
        data=WebhookSecretSerializer(
            {
                "secret": secret.secret,
                "created_at": secret.created_at,
                "rotated_at": secret.rotated_at,
                "signature_header": SIGNATURE_HEADER,
                "delivery_header": DELIVERY_HEADER,
                "verification": VERIFICATION,
            }
        ).data,
    )


class WebhookSecretView(APIView):
    permission_classes = [permissions.IsAuthenticated]

    @extend_schema(responses={200: WebhookSecretSerializer}, tags=["webhooks"])
    def get(self, request: Request) -> Response:
        """Your webhook secret, made on first asking: the key your completion webhooks are
        signed with."""
        return _answer(services.ensure_secret(user=request.user))


class RotateWebhookSecretView(APIView):
    permission_classes = [permissions.IsAuthenticated]

    @extend_schema(request=None, responses={200: WebhookSecretSerializer}, tags=["webhooks"])
    def post(self, request: Request) -> Response:
        """A new webhook secret; webhooks sent from now on, retries included, are signed
        with it alone."""
        return _answer(services.rotate_secret(user=request.user))
