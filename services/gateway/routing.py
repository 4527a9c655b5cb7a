"""The route class of the gateway's routers: a 405 that lists every method of the path."""

from __future__ import annotations

from fastapi import HTTPException
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.types import Receive, Scope, Send


class AllowingRoute(APIRoute):
    """Starlette's 405 lists only the methods of the first route whose path matched (one
    route per method here), so a client would not learn, say, that a segment can be PUT
    where it asked to PATCH. This one lists the methods of every route of the path."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods and scope["method"] not in self.methods:
            # Included routers keep their routes; the contexts carry the full paths.
            contexts = list(iter_route_contexts(scope["app"].routes))
            path = next(c.path_format for c in contexts if c.original_route is self)
            served = {
                method for c in contexts if c.path_format == path for method in c.methods or ()
            }
            raise HTTPException(405, "Method Not Allowed", {"Allow": ", ".join(sorted(served))})
        await super().handle(scope, receive, send)
