"""API token authentication that takes `Authorization: Bearer <token>` as well as DRF's
`Authorization: Token <token>`: most HTTP clients and tools send the Bearer form.

Both keep what a token's lookup found for API_TOKEN_CACHE_SECONDS in the process: the query
was the largest single cost of a one-image upload in the web process (docs/performance.md).
A staff member's permissions are kept with the lookup. A token deleted, or its user, their
groups or permissions changed, is forgotten at once by the process that made the
change and within API_TOKEN_CACHE_SECONDS by the others."""

import copy

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import Group
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.dispatch import receiver
from django.http import HttpRequest
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.plumbing import build_bearer_security_scheme_object
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token

from common.readings import kept_reading

# Beyond this many tokens the kept lookups are all dropped, so that many clients' tokens
# cannot grow a process without bound (a refused token is never kept).
MAX_KEPT_TOKENS = 10_000

_lookups: dict[str, tuple[float, tuple]] = {}


def forget_tokens() -> None:
    """Drop every kept lookup: the next request of each token asks the database again."""
    _lookups.clear()


class CachedTokenAuthentication(TokenAuthentication):
    def authenticate_credentials(self, key: str) -> tuple:
        if len(_lookups) >= MAX_KEPT_TOKENS:
            forget_tokens()
        # super() raises AuthenticationFailed for an unknown token or an inactive user: such
        # a lookup is never kept.
        user, token = kept_reading(
            _lookups, key, settings.API_TOKEN_CACHE_SECONDS, lambda: self._lookup(key)
        )
        # A copy per request: the requests of one token run at once on the process's
        # threads, and what one of them sets on its request.user must not reach the others.
        return copy.copy(user), token

    def _lookup(self, key: str) -> tuple:
        user, token = super().authenticate_credentials(key)
        if user.is_staff:
            # A staff member's permissions are kept with the lookup (on the user; the copies
            # share them): the access rules ask for them on most requests.
            user.get_all_permissions()
        return user, token


class BearerTokenAuthentication(CachedTokenAuthentication):
    keyword = "Bearer"


def api_user(request: HttpRequest) -> AbstractBaseUser | None:
    """The user of the request's API token (either form), for a plain Django view that
    API clients reach too; None without one. Raises AuthenticationFailed for a bad one."""
    for scheme in (CachedTokenAuthentication(), BearerTokenAuthentication()):
        if found := scheme.authenticate(request):
            return found[0]
    return None


@receiver(post_delete, sender=Token)
@receiver(post_save, sender=Token)
@receiver(post_save, sender=get_user_model())
@receiver(m2m_changed, sender=get_user_model().groups.through)
@receiver(m2m_changed, sender=get_user_model().user_permissions.through)
@receiver(m2m_changed, sender=Group.permissions.through)
def _forget_changed_tokens(**_kwargs) -> None:
    # A user's save may have made them inactive, a permission given or taken changes what
    # a kept user may do: every kept lookup goes, as it is cheap to redo and rare enough.
    forget_tokens()


class BearerTokenScheme(OpenApiAuthenticationExtension):
    # Without its own name the schema would describe it as a second "tokenAuth".
    target_class = BearerTokenAuthentication
    name = "bearerAuth"

    def get_security_definition(self, auto_schema) -> dict:
        return build_bearer_security_scheme_object(
            header_name="Authorization", token_prefix="Bearer"
        )
