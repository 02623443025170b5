import factory
from django.contrib.auth import get_user_model

from predictions.models import Batch


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password("pw-for-tests")


class BatchFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Batch

    owner = factory.SubFactory(UserFactory)
