"""Who a label is by. People label, skip and take tasks only as the annotator linked to
them (``annotators.subject``, the principal's name); services and admins name the
annotator, as the monitor does when it files a confirmed flag's correction in the name of
the clinician who flagged it. How a record gets linked:

- a clinician registering themselves links the record to themselves (first use);
- a service or an admin may link an unlinked record to a subject;
- only an admin changes a link once made;
- one annotator per subject (a unique constraint).

Reading is wider than labelling: a clinical lead reads any annotator's progress (the
labelling dashboard), though they too label only as themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from clinalign.common.auth import ACTS_FOR_OTHERS, Principal, Role
from clinalign.common.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from clinalign.preference.domain import Annotator, LabelMeta
from clinalign.preference.models import AnnotatorRow

_NOT_A_PERSON = ACTS_FOR_OTHERS | {Role.ML_ENGINEER}


@dataclass(frozen=True)
class Caller:
    """The principal a use case runs for: its name (audit entries record it), whether it
    is a person (acts only as themselves), may name annotators and link records (services,
    admins), may change a link once made (admins), and may read other annotators' figures
    (clinical leads)."""

    name: str
    person: bool
    names_annotators: bool
    relinks: bool = False
    via: str = ""  # the front door acting for the person, recorded beside them
    reads_annotators: bool = False

    @property
    def shown(self) -> str:
        """The name audit entries record."""
        return f"{self.name} via {self.via}" if self.via else self.name

    @classmethod
    def of(cls, principal: Principal | None) -> Caller:
        if principal is None:  # in-process calls (tests, tools) act as a service
            return cls("local", person=False, names_annotators=True)
        held = principal.roles
        return cls(
            principal.name,
            person=not held & _NOT_A_PERSON,
            names_annotators=principal.acts_for_others,
            relinks=Role.ADMIN in held,
            via=principal.via,
            reads_annotators=Role.CLINICAL_LEAD in held,
        )


class Labelled(Protocol):
    @property
    def meta(self) -> LabelMeta: ...


L = TypeVar("L", bound=Labelled)


def linked_annotator(session: Session, subject: str) -> str | None:
    return session.scalar(select(AnnotatorRow.id).where(AnnotatorRow.subject == subject))


def acting_as(session: Session, caller: Caller, field: str, requested: str) -> str:
    """The annotator the caller acts as: the one linked to a person (``requested`` may be
    empty or must name it), or the one a service or admin names."""
    if caller.names_annotators:
        if not requested:
            raise InvalidArgument(field, "is required")
        return requested
    mine = linked_annotator(session, caller.name)
    if mine is None:
        raise FailedPrecondition(
            f"{field}: no annotator is linked to {caller.name!r}; register yourself with "
            "RegisterAnnotator or ask an admin to link your annotator record"
        )
    if requested and requested != mine:
        raise PermissionDenied(f"{field}: {requested!r} is not you; you label as {mine!r}")
    return mine


def reading_as(session: Session, caller: Caller, field: str, requested: str) -> str:
    """The annotator whose figures the caller reads: as :func:`acting_as`, except that a
    clinical lead may name any annotator (empty: themselves)."""
    if caller.reads_annotators and requested:
        return requested
    return acting_as(session, caller, field, requested)


def bind(session: Session, caller: Caller, field: str, items: Sequence[L]) -> list[L]:
    """``items`` with each label's annotator resolved by :func:`acting_as`."""
    out = []
    for i, item in enumerate(items):
        who = acting_as(
            session, caller, f"{field}[{i}].context.annotator_id", item.meta.annotator_id
        )
        out.append(replace(item, meta=replace(item.meta, annotator_id=who)))  # type: ignore[type-var]
    return out


def registration(session: Session, caller: Caller, a: Annotator) -> Annotator:
    """The record to store for a RegisterAnnotator call, its link decided by the rules
    above; refused when the caller may not make it."""
    row = session.get(AnnotatorRow, a.id)
    current = row.subject if row is not None else None
    if caller.person:
        if a.subject and a.subject != caller.name:
            raise PermissionDenied("annotator.subject: a clinician registers only themselves")
        if row is not None and current != caller.name:
            raise PermissionDenied(
                f"annotator.id: {a.id!r} is another annotator's record; ask an admin to "
                "link it to you"
            )
        subject = caller.name
    elif not a.subject:
        return replace(a, subject=current or "")  # an update keeps the link
    else:
        if not caller.names_annotators:
            raise PermissionDenied("annotator.subject: only a service or an admin links records")
        if current and current != a.subject and not caller.relinks:
            raise PermissionDenied(
                f"annotator.subject: {a.id!r} is linked to another subject; only an admin "
                "changes a link"
            )
        subject = a.subject
    other = linked_annotator(session, subject)
    if other is not None and other != a.id:
        raise FailedPrecondition(
            f"annotator.subject: {subject!r} is already annotator {other!r}; one annotator "
            "per person"
        )
    return replace(a, subject=subject)
