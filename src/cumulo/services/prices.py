"""What each billable thing costs: the configured prices (cumulo.config.PriceSettings and each
instance type's price_per_hour) turned into rates, and the price list users read.

A rate is a quantity (1, or GiB) times a unit price per period: an hour, or a month of 730
hours (how clouds turn a GiB-month into hours). Metering (cumulo.services.metering) records
rates as they were when an interval opened; usage (cumulo.services.usage) multiplies them by
the seconds recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from pydantic import BaseModel

from cumulo.config import Settings

HOURS_PER_MONTH = 730
_MIB_PER_GIB = Decimal(1024)


@dataclass(frozen=True)
class Rate:
    kind: str  # instance | boot_disk | volume | snapshot | public_ip | dedicated_host
    basis: str  # the price's name, shown on usage lines: "type s1.medium", "volume GiB-month"
    quantity: int  # 1, or GiB
    unit_price: Decimal  # per unit and period
    period_hours: int  # 1 or HOURS_PER_MONTH

    @property
    def price_per_hour(self) -> Decimal:
        return self.quantity * self.unit_price / self.period_hours


def decimal_text(value: Decimal, places: int) -> str:
    """`value` rounded to `places` decimals, without trailing zeros or an exponent."""
    q = value.quantize(Decimal(1).scaleb(-places))
    return format(q.normalize(), "f") if q else "0"


def instance_rate(settings: Settings, type_name: str | None, vcpus: int, ram_mib: int) -> Rate:
    """A running instance's: its type's hourly price, else (a custom size, or a type without
    a price) its vCPUs and RAM at the per-vCPU and per-GiB prices."""
    itype = settings.instance_type(type_name) if type_name else None
    if itype is not None and itype.price_per_hour is not None:
        return Rate("instance", f"type {itype.name}", 1, itype.price_per_hour, 1)
    p = settings.prices
    price = vcpus * p.vcpu_hour + Decimal(ram_mib) / _MIB_PER_GIB * p.ram_gib_hour
    label = f"type {type_name}" if itype is not None else "custom size"
    return Rate("instance", f"{label} ({vcpus} vCPU, {ram_mib} MiB)", 1, price, 1)


def boot_disk_rate(settings: Settings, gib: int) -> Rate:
    """An instance's boot disk is priced as a volume of its size, running or stopped."""
    return Rate("boot_disk", "volume GiB-month", gib, settings.prices.volume_gib_month,
                HOURS_PER_MONTH)


def volume_rate(settings: Settings, gib: int) -> Rate:
    return Rate("volume", "volume GiB-month", gib, settings.prices.volume_gib_month,
                HOURS_PER_MONTH)


def snapshot_rate(settings: Settings, gib: int) -> Rate:
    return Rate("snapshot", "snapshot GiB-month", gib, settings.prices.snapshot_gib_month,
                HOURS_PER_MONTH)


def public_ip_rate(settings: Settings) -> Rate:
    return Rate("public_ip", "public IP hour", 1, settings.prices.public_ip_hour, 1)


def dedicated_host_rate(settings: Settings) -> Rate:
    return Rate("dedicated_host", "dedicated host hour", 1, settings.prices.dedicated_host_hour,
                1)


class PriceView(BaseModel):
    """One line of the price list. `price` is exact decimal text, like every amount."""

    kind: str
    name: str
    unit: str  # hour | GiB-month | vCPU-hour | GiB-hour
    price: str
    price_per_hour: str  # of one unit (a GiB-month over 730 hours)
    currency: str


def price_list(settings: Settings) -> list[PriceView]:
    p = settings.prices

    def line(kind: str, name: str, unit: str, price: Decimal, hours: int = 1) -> PriceView:
        return PriceView(kind=kind, name=name, unit=unit, price=decimal_text(price, 9),
                         price_per_hour=decimal_text(price / hours, 9), currency=p.currency)

    out = [line("instance", t.name, "hour",
                instance_rate(settings, t.name, t.vcpus, t.ram_mib).unit_price)
           for t in settings.instance_types]
    out += [
        line("instance", "custom size: per vCPU", "vCPU-hour", p.vcpu_hour),
        line("instance", "custom size: per GiB of RAM", "GiB-hour", p.ram_gib_hour),
        line("boot_disk", "boot disk", "GiB-month", p.volume_gib_month, HOURS_PER_MONTH),
        line("volume", "volume", "GiB-month", p.volume_gib_month, HOURS_PER_MONTH),
        line("snapshot", "snapshot", "GiB-month", p.snapshot_gib_month, HOURS_PER_MONTH),
        line("public_ip", "public IPv4 address", "hour", p.public_ip_hour),
        line("dedicated_host", "dedicated host", "hour", p.dedicated_host_hour),
    ]
    return out
