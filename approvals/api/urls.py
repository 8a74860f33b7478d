from django.urls import path
from rest_framework.routers import SimpleRouter

from . import views

router = SimpleRouter()
router.trailing_slash = "/?"
router.register("approvals", views.ApprovalViewSet, basename="approval")

# Mounted at /v1/.
urlpatterns = router.urls

# The original's name of POST /v1/approvals.
ask_async = views.ApprovalViewSet.as_view({"post": "create"})

# Mounted at /api/v1/: the original's human-in-the-loop routes.
human_urlpatterns = [
    path("human/ask", views.HumanAskView.as_view(), name="human-ask"),
    path("human/ask-async", ask_async, name="human-ask-async"),
    path("human/pending", views.HumanPendingView.as_view(), name="human-pending"),
    path(
        "human/pending/<vsb_uuid:request_id>",
        views.HumanPendingDetailView.as_view(),
        name="human-pending-detail",
    ),
    path("human/respond", views.HumanRespondView.as_view(), name="human-respond"),
]
